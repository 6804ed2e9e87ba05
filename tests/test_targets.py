"""Several findings per image: each [SEG] scored against the target its sentence names (hand-computed cases)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from sim4seg.data.prompts import answer_for
from sim4seg.data.vocab import M3DS_SUBSETS
from sim4seg.metrics import SegmentationMeter, TargetPair, match_targets, score_targets, seg_labels

CXD, BUSI = M3DS_SUBSETS["ChestX-Det"], M3DS_SUBSETS["BUSI"]


def box(r0: int, r1: int, c0: int, c1: int, hw: tuple[int, int] = (4, 4)) -> np.ndarray:
    """Rows r0..r1-1, cols c0..c1-1 of an [H, W] bool mask."""
    m = np.zeros(hw, bool)
    m[r0:r1, c0:c1] = True
    return m


EFFUSION = box(0, 2, 0, 4)  # 8 px, top half
NODULE = box(2, 4, 2, 4)    # 4 px, bottom-right block


def scores(answer: str, preds: list[np.ndarray], targets: list[tuple[str, np.ndarray]], vocab=CXD):
    pairs, counts = score_targets(answer, preds, targets, vocab)
    meter = SegmentationMeter()
    meter.add(counts[:, 0], counts[:, 1], counts[:, 2], counts[:, 3])
    return pairs, meter.result()


@pytest.mark.parametrize("answer,labels", [
    ("The findings are effusion [SEG] and nodule [SEG]. The diagnosis is effusion and nodule.",
     ["effusion", "nodule"]),
    ("Sure, the findings are nodule [SEG] and effusion [SEG].", ["nodule", "effusion"]),
    ("The pleural effusion is [SEG], and the nodules are [SEG].", ["effusion", "nodule"]),  # synonym, plural
    ("There is no effusion; the nodule is [SEG].", ["nodule"]),  # a negated mention names nothing
    ("[SEG] shows the effusion.", ["effusion"]),  # nothing before: the first label after it
    ("There are two nodules: [SEG] and [SEG].", ["nodule", "nodule"]),  # the last label before, in the sentence
    ("It is [SEG]. The diagnosis is effusion and nodule.", [None]),  # its sentence names no label
    ("Effusion is seen. A possible nodule is [SEG].", ["nodule"]),  # other sentences do not count; hedged names
    ("It is [SEG] and a nodule [SEG].", ["nodule", "nodule"]),  # after it, up to the next [SEG]
])
def test_seg_labels_follow_the_sentence_rule(answer: str, labels: list) -> None:
    assert seg_labels(answer, CXD) == labels


def test_each_seg_against_the_target_its_sentence_names() -> None:
    # pred 0 = effusion exactly (IoU 1); pred 1 = nodule plus 2 px (inter 4, union 6).
    grown = NODULE | box(1, 2, 2, 4)
    answer = "The findings are effusion [SEG] and nodule [SEG]. The diagnosis is effusion and nodule."
    pairs, res = scores(answer, [EFFUSION, grown], [("nodule", NODULE), ("effusion", EFFUSION)])
    assert pairs == [TargetPair(0, 1, "effusion"), TargetPair(1, 0, "nodule")]
    assert res["gIoU"] == pytest.approx((1 + 4 / 6) / 2)
    assert res["cIoU"] == pytest.approx((8 + 4) / (8 + 6))


def test_answer_order_does_not_matter_when_labels_are_named() -> None:
    answer = "The findings are nodule [SEG] and effusion [SEG]."
    _, res = scores(answer, [NODULE, EFFUSION], [("effusion", EFFUSION), ("nodule", NODULE)])
    assert res["gIoU"] == res["cIoU"] == 1.0


def test_unmatched_predictions_and_targets_count_as_empty_masks() -> None:
    # "mass" is no target: its mask (the effusion region, 8 px) meets an empty target (IoU 0); the effusion
    # target meets an empty prediction (IoU 0); the nodule pair is exact (IoU 1).
    answer = "The findings are mass [SEG] and nodule [SEG]."
    pairs, res = scores(answer, [EFFUSION, NODULE], [("effusion", EFFUSION), ("nodule", NODULE)])
    assert pairs == [TargetPair(1, 1, "nodule"), TargetPair(0, None, "mass"), TargetPair(None, 0, "effusion")]
    assert res["gIoU"] == pytest.approx(1 / 3)
    assert res["cIoU"] == pytest.approx(4 / (8 + 4 + 8))


def test_a_single_seg_naming_no_label_scores_nothing() -> None:
    # One [SEG] whose sentence names no label: 3 pairs, all IoU 0 (pred vs empty, empty vs each target).
    pairs, res = scores("It is [SEG]. The diagnosis is effusion and nodule.", [EFFUSION | NODULE],
                        [("effusion", EFFUSION), ("nodule", NODULE)])
    assert [(p.seg, p.target) for p in pairs] == [(0, None), (None, 0), (None, 1)]
    assert res["gIoU"] == 0.0 and res["cIoU"] == 0.0


def test_more_segs_than_targets_of_a_label() -> None:
    # Two [SEG]s name the nodule: the one closer to it (IoU 1) takes it, the other (IoU 0 with it) is extra.
    pairs, res = scores("The nodule is [SEG], the nodule is [SEG].", [box(0, 1, 0, 1), NODULE], [("nodule", NODULE)])
    assert pairs == [TargetPair(1, 0, "nodule"), TargetPair(0, None, "nodule")]
    assert res["gIoU"] == pytest.approx(0.5)
    assert res["cIoU"] == pytest.approx(4 / 5)


def test_same_label_targets_pair_by_best_iou() -> None:
    # Two benign lesions (left, right); the answer segments the right one first. Greedy IoU pairs pred 0 with
    # target 1 (IoU 1) and pred 1 with target 0 (inter 2, union 4: IoU 0.5).
    left, right = box(0, 4, 0, 1), box(0, 4, 3, 4)
    answer = "The findings are benign [SEG] and benign [SEG]. The diagnosis is benign."
    pairs, res = scores(answer, [right, box(0, 2, 0, 1)], [("benign", left), ("benign", right)], BUSI)
    assert pairs == [TargetPair(0, 1, "benign"), TargetPair(1, 0, "benign")]
    assert res["gIoU"] == pytest.approx(0.75)
    assert res["cIoU"] == pytest.approx(6 / 8)


def test_ties_go_to_the_earlier_seg_and_target() -> None:
    empty = np.zeros((4, 4), bool)
    pairs = match_targets(["benign", "benign"], [empty, empty], [("benign", EFFUSION), ("benign", NODULE)])
    assert pairs == [TargetPair(0, 0, "benign"), TargetPair(1, 1, "benign")]


def test_torch_masks_are_scored_like_numpy() -> None:
    torch = pytest.importorskip("torch")
    answer = "The findings are effusion [SEG] and nodule [SEG]."
    targets = [("effusion", torch.from_numpy(EFFUSION)), ("nodule", torch.from_numpy(NODULE))]
    _, counts = score_targets(answer, [torch.from_numpy(EFFUSION), torch.zeros(4, 4, dtype=torch.bool)], targets,
                              CXD)
    assert counts.tolist() == [[8, 8, 8, 8], [0, 4, 0, 4]]


@pytest.mark.parametrize("subset", list(M3DS_SUBSETS))
def test_every_label_pair_of_the_generated_answers_reads_back(subset: str) -> None:
    """The answers training writes (prompts.answer_for) name each target so the rule gives it back in order."""
    sub = M3DS_SUBSETS[subset]
    for a, b in itertools.permutations(sub.labels, 2):
        for fmt in ("seg", "diagnosis", "cot"):
            answer = answer_for(fmt, "r", sorted([a, b]), f"Finally, the diagnosis is {a} and {b}.",
                                targets=[a, b])
            assert seg_labels(answer, sub) == [a, b], answer
