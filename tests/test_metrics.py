"""Tests for sim4seg.metrics: hand-computed segmentation cases, a brute-force reference, the diagnosis rule."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sim4seg.data.prompts import answer_for
from sim4seg.data.vocab import M3DS_SUBSETS
from sim4seg.metrics import (
    SegmentationMeter,
    canonical_label,
    diagnosis_correct,
    diagnosis_span,
    extract_labels,
    label_matches,
    normalize_answer,
    normalize_text,
    segmentation_counts,
    segmentation_scores,
)

# ------------------------------------------------------------------------------------------------------------
# Segmentation: hand-computed cases
# ------------------------------------------------------------------------------------------------------------


def mask(shape: tuple[int, ...], *on: tuple[int, ...]) -> np.ndarray:
    m = np.zeros(shape, dtype=bool)
    for idx in on:
        m[idx] = True
    return m


def approx(d: dict[str, float]) -> dict[str, object]:
    return {k: pytest.approx(v, abs=1e-12) for k, v in d.items()}


def test_empty_prediction_and_empty_ground_truth_score_one() -> None:
    e = mask((3, 3))
    assert segmentation_scores([e], [e.copy()]) == {"gIoU": 1.0, "cIoU": 1.0, "Dice": 1.0}
    inter, union = segmentation_counts([e], [e])
    assert inter.tolist() == [0] and union.tolist() == [0]


def test_empty_prediction_against_nonempty_ground_truth_scores_zero() -> None:
    assert segmentation_scores([mask((3, 3))], [mask((3, 3), (1, 1))]) == {"gIoU": 0.0, "cIoU": 0.0, "Dice": 0.0}


def test_full_overlap_scores_one() -> None:
    m = mask((4, 5), (0, 0), (2, 3), (3, 4))
    assert segmentation_scores([m], [m.copy()]) == {"gIoU": 1.0, "cIoU": 1.0, "Dice": 1.0}


def test_disjoint_masks_score_zero() -> None:
    assert segmentation_scores([mask((2, 2), (0, 0))], [mask((2, 2), (1, 1))]) == {"gIoU": 0.0, "cIoU": 0.0,
                                                                                   "Dice": 0.0}


def test_partial_overlap_by_hand() -> None:
    # pred: row 0 cols 0-2 and (1, 0) -> 4 px; gt: row 0 cols 1-3 -> 3 px; overlap (0,1), (0,2) -> 2 px.
    pred = mask((4, 4), (0, 0), (0, 1), (0, 2), (1, 0))
    gt = mask((4, 4), (0, 1), (0, 2), (0, 3))
    inter, union = segmentation_counts([pred], [gt])
    assert (inter.tolist(), union.tolist()) == ([2], [5])
    assert inter.dtype == np.int64 and union.dtype == np.int64
    assert segmentation_scores([pred], [gt]) == approx({"gIoU": 2 / 5, "cIoU": 2 / 5, "Dice": 4 / 7})


def test_ciou_pools_counts_while_giou_averages_ratios() -> None:
    # Pair 1: inter 1, union 2 (IoU 1/2). Pair 2 (different shape): inter 9, union 10 (IoU 9/10).
    p1, g1 = mask((1, 2), (0, 0)), mask((1, 2), (0, 0), (0, 1))
    p2 = np.ones((2, 5), dtype=np.uint8)
    g2 = p2.copy()
    g2[1, 4] = 0
    scores = segmentation_scores([p1, p2], [g1, g2])
    assert scores == approx({"gIoU": (1 / 2 + 9 / 10) / 2, "cIoU": 10 / 12, "Dice": (2 / 3 + 18 / 19) / 2})
    assert scores["gIoU"] != pytest.approx(scores["cIoU"])


def test_empty_pair_counts_in_giou_but_not_in_ciou() -> None:
    # An empty/empty pair scores 1 in gIoU but adds nothing to the pooled counts.
    e = mask((2, 2))
    scores = segmentation_scores([e, mask((2, 2), (0, 0))], [e, mask((2, 2), (1, 1))])
    assert scores == {"gIoU": 0.5, "cIoU": 0.0, "Dice": 0.5}


def test_no_masks_gives_nan() -> None:
    assert all(math.isnan(v) for v in segmentation_scores([], []).values())
    assert all(math.isnan(v) for v in SegmentationMeter().result().values())


def test_nonzero_values_other_than_one_are_rejected() -> None:
    with pytest.raises(ValueError, match="mask pair 1: ground truth is not binary"):
        segmentation_scores([mask((2, 2)), mask((2, 2))], [mask((2, 2)), np.full((2, 2), 255, np.uint8)])
    with pytest.raises(ValueError, match="mask pair 0: prediction is not binary"):
        segmentation_scores([torch.full((2, 2), 0.7)], [torch.zeros(2, 2)])


def test_float_and_uint8_zero_one_masks_are_accepted() -> None:
    pred = np.array([[1.0, 0.0], [1.0, 1.0]], dtype=np.float32)
    gt = np.array([[1, 1], [0, 1]], dtype=np.uint8)
    assert segmentation_counts([pred], [gt])[0].tolist() == [2]


def test_mismatched_shapes_name_index_and_both_shapes() -> None:
    with pytest.raises(ValueError, match=r"mask pair 1: prediction has shape \(2, 3\) but ground truth has shape "
                                         r"\(3, 2\)"):
        segmentation_scores([mask((2, 2)), mask((2, 3))], [mask((2, 2)), mask((3, 2))])
    with pytest.raises(ValueError, match=r"mask pair 0: prediction has shape \(4, 4\) but ground truth has shape "
                                         r"\(4, 5\)"):
        segmentation_counts([torch.zeros(4, 4)], [torch.zeros(4, 5)])


def test_mismatched_lengths_are_rejected() -> None:
    with pytest.raises(ValueError, match="2 predicted masks but 1 ground-truth"):
        segmentation_scores([mask((2, 2)), mask((2, 2))], [mask((2, 2))])


def test_single_2d_array_is_not_taken_for_a_sequence_of_rows() -> None:
    with pytest.raises(ValueError, match="sequence of masks"):
        segmentation_scores(mask((3, 3)), mask((3, 3)))
    with pytest.raises(ValueError, match="sequence of masks"):
        segmentation_counts(torch.zeros(3, 3), torch.zeros(3, 3))


def test_batched_tensor_and_mixed_numpy_torch_pairs() -> None:
    pred = torch.zeros(2, 3, 3, dtype=torch.bool)
    pred[0, 0, 0] = pred[1, 1, 1] = True
    gt = np.zeros((2, 3, 3), dtype=np.uint8)
    gt[0, 0, 0] = gt[0, 0, 1] = 1
    inter, union = segmentation_counts(pred, gt)
    assert (inter.tolist(), union.tolist()) == ([1, 0], [2, 1])
    assert segmentation_counts([pred[0], gt[1]], [gt[0], pred[1]])[1].tolist() == [2, 1]
    # a flipped numpy view (negative strides) paired with a tensor
    assert segmentation_counts([np.flip(gt[0], axis=1)], [pred[0]])[0].tolist() == [0]


def test_meter_accumulates_streams_and_merges() -> None:
    p1, g1 = mask((1, 2), (0, 0)), mask((1, 2), (0, 0), (0, 1))
    p2, g2 = mask((3,), (0,), (1,)), mask((3,), (2,))
    a, b = SegmentationMeter(), SegmentationMeter()
    a.add_masks(p1, g1)
    b.add(0, 3, pred_area=2, gt_area=1)
    a.merge(b)
    assert len(a) == 2
    assert a.result() == segmentation_scores([p1, p2], [g1, g2])
    assert a.ious().tolist() == [0.5, 0.0]


def test_meter_rejects_inconsistent_counts() -> None:
    m = SegmentationMeter()
    with pytest.raises(ValueError, match="inter <= union"):
        m.add(3, 2)
    with pytest.raises(ValueError, match="inconsistent"):
        m.add(1, 4, pred_area=2, gt_area=2)  # 2 + 2 != 1 + 4
    with pytest.raises(ValueError, match="both"):
        m.add(1, 4, pred_area=2)
    assert len(m) == 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_tensors_match_numpy() -> None:
    rng = np.random.default_rng(0)
    preds = [rng.random((7, 9)) < 0.5 for _ in range(3)]
    gts = [rng.random((7, 9)) < 0.5 for _ in range(3)]
    cuda = segmentation_counts([torch.from_numpy(p).cuda() for p in preds], [torch.from_numpy(g).cuda() for g in gts])
    ref = segmentation_counts(preds, gts)
    assert [c.tolist() for c in cuda] == [c.tolist() for c in ref]


# ------------------------------------------------------------------------------------------------------------
# Segmentation: properties against a brute-force pure-Python reference
# ------------------------------------------------------------------------------------------------------------


@st.composite
def mask_pairs(draw: st.DrawFn) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """0-5 pairs of random shapes (1-3 dims, sides 0-6) and random densities, including all-empty masks."""
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    preds, gts = [], []
    for _ in range(draw(st.integers(0, 5))):
        shape = tuple(draw(st.lists(st.integers(0, 6), min_size=1, max_size=3)))
        dp, dg = draw(st.sampled_from([0.0, 0.3, 0.7, 1.0])), draw(st.sampled_from([0.0, 0.3, 0.7, 1.0]))
        preds.append(rng.random(shape) < dp)
        gts.append(rng.random(shape) < dg)
    return preds, gts


def reference(preds: list[np.ndarray], gts: list[np.ndarray]) -> tuple[list[int], list[int], dict[str, float]]:
    """Pixel by pixel in plain Python."""
    inters, unions, ious, dices = [], [], [], []
    for p, g in zip(preds, gts, strict=True):
        pl, gl = p.ravel().tolist(), g.ravel().tolist()
        i = sum(1 for a, b in zip(pl, gl, strict=True) if a and b)
        u = sum(1 for a, b in zip(pl, gl, strict=True) if a or b)
        size_p, size_g = sum(1 for a in pl if a), sum(1 for b in gl if b)
        inters.append(i)
        unions.append(u)
        ious.append(i / u if u else 1.0)
        dices.append(2 * i / (size_p + size_g) if size_p + size_g else 1.0)
    if not preds:
        return [], [], {}
    scores = {"gIoU": sum(ious) / len(ious), "cIoU": sum(inters) / sum(unions) if sum(unions) else 1.0,
              "Dice": sum(dices) / len(dices)}
    return inters, unions, scores


@settings(max_examples=150, deadline=None)
@given(mask_pairs())
def test_matches_bruteforce_reference(pair: tuple[list[np.ndarray], list[np.ndarray]]) -> None:
    preds, gts = pair
    ref_i, ref_u, ref_scores = reference(preds, gts)
    inter, union = segmentation_counts(preds, gts)
    assert inter.tolist() == ref_i and union.tolist() == ref_u
    if preds:
        scores = segmentation_scores(preds, gts)
        assert scores == approx(ref_scores)
        assert all(0.0 <= v <= 1.0 for v in scores.values())
        assert scores["Dice"] >= scores["gIoU"] - 1e-12  # per mask, Dice >= IoU


@settings(max_examples=100, deadline=None)
@given(mask_pairs())
def test_symmetric_and_identical(pair: tuple[list[np.ndarray], list[np.ndarray]]) -> None:
    preds, gts = pair
    if not preds:
        return
    assert segmentation_scores(preds, gts) == segmentation_scores(gts, preds)
    assert segmentation_scores(preds, [p.copy() for p in preds]) == {"gIoU": 1.0, "cIoU": 1.0, "Dice": 1.0}


@settings(max_examples=100, deadline=None)
@given(mask_pairs(), st.sampled_from([torch.bool, torch.uint8, torch.float32, torch.int64]))
def test_torch_inputs_equal_numpy_inputs(pair: tuple[list[np.ndarray], list[np.ndarray]], dtype: torch.dtype) -> None:
    preds, gts = pair
    t_preds = [torch.from_numpy(p).to(dtype) for p in preds]
    t_gts = [torch.from_numpy(g).to(dtype) for g in gts]
    assert [c.tolist() for c in segmentation_counts(t_preds, t_gts)] == \
        [c.tolist() for c in segmentation_counts(preds, gts)]
    if preds:
        assert segmentation_scores(t_preds, t_gts) == segmentation_scores(preds, gts)


@settings(max_examples=100, deadline=None)
@given(mask_pairs())
def test_meter_from_counts_equals_scores_from_masks(pair: tuple[list[np.ndarray], list[np.ndarray]]) -> None:
    preds, gts = pair
    if not preds:
        return
    _, _, ref_scores = reference(preds, gts)
    meter = SegmentationMeter()
    for p, g in zip(preds, gts, strict=True):  # streamed one mask at a time, counts only
        (i,), (u,) = segmentation_counts([p], [g])
        meter.add(int(i), int(u), int(p.sum()), int(g.sum()))
    assert meter.result() == segmentation_scores(preds, gts)
    assert meter.result() == approx(ref_scores)


# ------------------------------------------------------------------------------------------------------------
# Diagnosis accuracy
# ------------------------------------------------------------------------------------------------------------

COT = ("It is [SEG]. The border is irregular, which could suggest malignant, but the echo texture is uniform "
       "and the margins are smooth. Finally, the diagnosis is benign.")

DIAGNOSIS_ROWS = [
    # plain
    ("It is [SEG]. The diagnosis is benign.", ["benign"], "BUSI", "auto", True),
    ("It is [SEG]. The diagnosis is benign.", ["malignant"], "BUSI", "auto", False),
    ("It is [SEG]. The diagnosis is benign.", ["benign"], "BUSI", "diagnosis", True),
    ("DIAGNOSIS: MALIGNANT!!!", ["malignant"], "TN3K", "auto", True),
    ("The breast tissue appears normal.", ["normal"], "BUSI", "auto", True),
    ("It is [SEG]. The diagnosis is polyp.", ["polyp"], "Kvasir-SEG", "auto", True),
    # hedged
    ("It is [SEG]. The diagnosis is benign or malignant.", ["benign"], "BUSI", "auto", False),
    ("It is [SEG]. The diagnosis is benign or malignant.", ["malignant"], "BUSI", "auto", False),
    ("It could be an elbow fracture or a wrist fracture.", ["wrist fracture"], "BFD", "auto", False),
    # negated
    ("Not malignant, it is benign.", ["benign"], "BUSI", "auto", True),
    ("It is [SEG]. It is not malignant but benign.", ["benign"], "BUSI", "auto", True),
    ("It is [SEG]. It is not malignant.", ["malignant"], "TN3K", "auto", False),
    ("It is [SEG]. The lesion isn't malignant; it is benign.", ["benign"], "TN3K", "auto", True),
    ("There is no evidence of fracture.", ["fracture"], "FracAtlas", "auto", False),
    ("It is [SEG]. The diagnosis is effusion without nodule.", ["effusion"], "ChestX-Det", "auto", True),
    ("It is [SEG]. No effusion or nodule; the diagnosis is mass.", ["mass"], "ChestX-Det", "auto", True),
    ("Non-malignant lesion.", ["benign"], "BUSI", "auto", True),  # "non" negates, and states the opposite
    ("Non-malignant lesion.", ["malignant"], "BUSI", "auto", False),
    # synonyms
    ("It is [SEG]. The diagnosis is cancerous.", ["malignant"], "BUSI", "auto", True),
    ("The nodule is non-cancerous.", ["benign"], "TN3K", "auto", True),
    ("The fundus shows signs of AMD.", ["age-related macular degeneration"], "FIVES", "auto", True),
    ("It is [SEG]. The diagnosis is age related macular degeneration.", ["age-related macular degeneration"],
     "FIVES", "auto", True),
    ("The fundus shows DR.", ["diabetic retinopathy"], "FIVES", "auto", True),
    ("The drug addresses glaucoma.", ["glaucoma"], "FIVES", "auto", True),  # "dr" is not inside "drug"
    ("The drug addresses glaucoma.", ["diabetic retinopathy", "glaucoma"], "FIVES", "auto", False),
    ("It is [SEG]. The diagnosis is naevus.", ["nevus"], "ISIC", "auto", True),
    ("It is [SEG]. A molecular pattern suggests melanoma.", ["melanoma"], "ISIC", "auto", True),  # not "mole"
    ("It is [SEG]. The diagnosis is pleural effusion.", ["effusion"], "ChestX-Det", "auto", True),
    ("It is [SEG]. The diagnosis is humerus.", ["humerus fracture"], "BFD", "auto", True),
    # multi-label ChestX-Det
    ("It is [SEG]. The diagnosis is effusion and nodule.", ["effusion", "nodule"], "ChestX-Det", "auto", True),
    ("It is [SEG]. The diagnosis is effusion and nodule.", ["nodule", "effusion"], "ChestX-Det", "auto", True),
    ("It is [SEG]. The diagnosis is effusion and nodule.", ["effusion"], "ChestX-Det", "auto", False),
    ("It is [SEG]. The diagnosis is effusion.", ["effusion", "nodule"], "ChestX-Det", "auto", False),
    # overlapping labels are consumed longest first
    ("It is [SEG]. The diagnosis is diffuse nodule.", ["diffuse nodule"], "ChestX-Det", "auto", True),
    ("It is [SEG]. The diagnosis is diffuse nodule.", ["diffuse nodule", "nodule"], "ChestX-Det", "auto", False),
    ("It is [SEG]. The diagnosis is diffuse nodule and nodule.", ["diffuse nodule", "nodule"], "ChestX-Det",
     "auto", True),
    ("It is [SEG]. The diagnosis is seborrheic keratosis.", ["seborrheic keratosis"], "ISIC", "auto", True),
    ("It is [SEG]. The diagnosis is humerus fracture.", ["humerus fracture"], "BFD", "auto", True),
    # CoT: only the text after the last "Finally" counts
    (COT, ["benign"], "BUSI", "cot", True),
    (COT, ["benign"], "BUSI", "auto", True),
    (COT, ["benign"], "BUSI", "diagnosis", True),  # after [SEG]: "could suggest malignant" is a hedge
    ("It is [SEG]. Finally I checked the margins, which looked benign. Finally, the lesion is malignant.",
     ["malignant"], "BUSI", "cot", True),
    ("It is [SEG]. Benign features dominate. The lesion is malignant.", ["malignant"], "BUSI", "cot", True),
    # diagnosis format: the text after the last [SEG]
    ("It is [SEG]. The diagnosis is benign.", ["benign"], "ISBI", "diagnosis", True),
    ("The mass could be malignant. It is [SEG]. The diagnosis is benign.", ["benign"], "BUSI", "diagnosis", True),
    ("The diagnosis is benign. It is [SEG].", ["benign"], "BUSI", "diagnosis", True),  # nothing after: before
    ("The diagnosis is benign. [SEG].", ["benign"], "BUSI", "diagnosis", True),
    ("The diagnosis is benign. [SEG].", ["benign"], "BUSI", "auto", True),
    # last sentence when there is no marker
    ("Benign lesions are common. This one is malignant.", ["malignant"], "TN3K", "auto", True),
    # no diagnosis at all
    ("It is [SEG].", ["benign"], "BUSI", "auto", False),
    ("Sure, the segmentation result is [SEG].", ["polyp"], "Kvasir-SEG", "auto", False),
    ("I cannot tell from this image.", ["glaucoma"], "FIVES", "auto", False),
    ("", ["fracture"], "FracAtlas", "auto", False),
]


@pytest.mark.parametrize(("answer", "target", "subset", "fmt", "expected"), DIAGNOSIS_ROWS)
def test_diagnosis_table(answer: str, target: list[str], subset: str, fmt: str, expected: bool) -> None:
    assert diagnosis_correct(answer, target, M3DS_SUBSETS[subset], fmt) is expected


@pytest.mark.parametrize("name", sorted(M3DS_SUBSETS))
def test_training_answers_are_scored_correct_for_their_own_label_only(name: str) -> None:
    subset = M3DS_SUBSETS[name]
    for label in subset.labels:
        answer = answer_for("diagnosis", "rec-1", [label], None)
        assert extract_labels(answer, subset, "diagnosis") == [label]
        for other in subset.labels:
            assert diagnosis_correct(answer, [other], subset) is (other == label)


def test_training_answers_with_three_chestx_labels() -> None:
    subset = M3DS_SUBSETS["ChestX-Det"]
    answer = answer_for("diagnosis", "rec-2", ["pleural thickening", "diffuse nodule", "mass"], None)
    assert extract_labels(answer, subset) == ["diffuse nodule", "mass", "pleural thickening"]
    assert diagnosis_correct(answer, ["mass", "diffuse nodule", "pleural thickening"], subset)
    assert not diagnosis_correct(answer, ["mass", "nodule", "pleural thickening"], subset)


@pytest.mark.parametrize("name", sorted(n for n, s in M3DS_SUBSETS.items() if s.synonyms))
def test_every_synonym_maps_to_its_label(name: str) -> None:
    subset = M3DS_SUBSETS[name]
    for phrase, label in subset.synonyms.items():
        assert extract_labels(f"The diagnosis is {phrase.upper()}.", subset) == [label], phrase
        assert canonical_label(phrase, subset) == label


def test_extract_labels_sorted_unique_and_negations_visible() -> None:
    cxd = M3DS_SUBSETS["ChestX-Det"]
    answer = "It is [SEG]. The diagnosis is nodule, effusion and nodule, no fracture."
    assert extract_labels(answer, cxd) == ["effusion", "nodule"]
    assert [(m.label, m.negated) for m in label_matches(answer, cxd)] == [
        ("nodule", False), ("effusion", False), ("nodule", False), ("fracture", True)]


def test_phrases_do_not_match_across_clause_punctuation() -> None:
    cxd = M3DS_SUBSETS["ChestX-Det"]
    assert extract_labels("The opacity is diffuse, nodule.", cxd) == ["nodule"]
    assert extract_labels("The opacity is diffuse nodule.", cxd) == ["diffuse nodule"]
    assert extract_labels("No effusion, or nodule; mass.", cxd) == ["mass"]  # negation carries over "or"


def test_negation_reaches_through_its_clause() -> None:
    frac = M3DS_SUBSETS["FracAtlas"]
    assert extract_labels("There is no sign of fracture.", frac) == []
    assert extract_labels("There is no sign at all of any fracture.", frac) == []
    assert extract_labels("There is no displacement and the fracture is healing.", frac) == ["fracture"]
    assert extract_labels("No, a fracture.", frac) == ["fracture"]  # the comma ends the negation
    assert extract_labels("No, it is benign.", M3DS_SUBSETS["BUSI"]) == ["benign"]


def test_diagnosis_span_rules() -> None:
    assert diagnosis_span(COT, "cot") == "the diagnosis is benign"
    assert diagnosis_span("It is [SEG]. The diagnosis is Benign.", "diagnosis") == "the diagnosis is benign"
    assert diagnosis_span("It is [SEG]. Finally, benign.", "diagnosis") == "finally benign"
    assert diagnosis_span("First sentence. Second one!  ", "auto") == "first sentence second one"
    assert diagnosis_span("The diagnosis is benign. [SEG].", "diagnosis") == "the diagnosis is benign"
    assert diagnosis_span("It is [SEG]. Benign.", "diagnosis", M3DS_SUBSETS["BUSI"]) == "benign"
    assert diagnosis_span("Benign. It is [SEG]. Sure.", "diagnosis", M3DS_SUBSETS["BUSI"]) == "benign it is"
    assert diagnosis_span("No marker here", "cot") == "no marker here"
    assert diagnosis_span("Finally, it is [SEG] benign.", "cot") == "it is benign"  # [SEG] is not a word
    with pytest.raises(ValueError, match="answer format 'seg'"):
        diagnosis_span("It is [SEG].", "seg")


def test_normalisation() -> None:
    assert normalize_text("  Age-related  (AMD),\tnot -- DR's  ") == "age-related amd not drs"
    assert normalize_text("It isn't -benign- ; e_g") == "it is not benign e g"
    assert normalize_answer("Seborrhoeic keratosis, or a Naevus?", M3DS_SUBSETS["ISIC"]) == \
        "seborrheic keratosis or a nevus"


def test_unknown_target_label_is_an_error() -> None:
    with pytest.raises(ValueError, match="'tumour' is not a label of subset 'BUSI'"):
        diagnosis_correct("It is [SEG]. The diagnosis is benign.", ["tumour"], M3DS_SUBSETS["BUSI"])
    # a bare string target is one label, not a list of characters
    assert diagnosis_correct("It is [SEG]. The diagnosis is benign.", "benign", M3DS_SUBSETS["BUSI"])
