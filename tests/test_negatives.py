"""Images with no finding: the answer without [SEG], its parsing and grading, N-Acc / FP-rate / miss-rate."""

from __future__ import annotations

import math

import pytest

from sim4seg.data.prompts import answer_for
from sim4seg.data.schema import NORMAL
from sim4seg.data.vocab import M3DS_SUBSETS
from sim4seg.metrics import (
    diagnosis_correct,
    gives_mask,
    grading_vocabulary,
    n_seg,
    negative_scores,
    vote_gives_mask,
)

COT = "Firstly, the modality of this image is x-ray. Secondly, the image analysis shows no abnormality. " \
      "Finally, the diagnosis is normal."


def test_negative_answers_have_no_seg_and_positive_ones_are_unchanged() -> None:
    assert answer_for("diagnosis", "r", [NORMAL], None, negative=True) == \
        "No abnormality is found. The diagnosis is normal."
    assert answer_for("cot", "r", [NORMAL], COT, negative=True) == f"No abnormality is found. {COT}"
    assert answer_for("seg", "r", [NORMAL], None, negative=True) == "No abnormality is found."
    assert answer_for("cot", "r", [NORMAL], None, negative=True) is None  # a CoT answer needs the CoT
    # The paper's answers stay as they were.
    assert answer_for("diagnosis", "r", ["benign"], None) == "It is [SEG]. The diagnosis is benign."
    assert answer_for("cot", "r", ["benign"], "Finally, benign.") == "It is [SEG]. Finally, benign."
    assert answer_for("diagnosis", "r", ["benign"], None, targets=["benign"]) == \
        "It is [SEG]. The diagnosis is benign."


@pytest.mark.parametrize("subset", list(M3DS_SUBSETS))
@pytest.mark.parametrize("fmt", ["diagnosis", "cot"])
def test_negative_answers_parse_as_no_mask_and_grade_normal(subset: str, fmt: str) -> None:
    vocab = grading_vocabulary(M3DS_SUBSETS[subset])
    answer = answer_for(fmt, "r", [NORMAL], COT, negative=True)
    assert n_seg(answer) == 0
    assert diagnosis_correct(answer, [NORMAL], vocab, fmt)
    # ... and a positive answer is not read as "normal".
    other = next(x for x in vocab.labels if x != NORMAL)
    assert not diagnosis_correct(answer_for(fmt, "r", [other], f"Finally, the diagnosis is {other}."), [NORMAL],
                                 vocab, fmt)


def test_grading_vocabulary_adds_normal_only_where_missing() -> None:
    cxd = M3DS_SUBSETS["ChestX-Det"]
    with pytest.raises(ValueError, match="not a label"):  # why it is needed: "normal" is no ChestX-Det label
        diagnosis_correct("The diagnosis is normal.", [NORMAL], cxd)
    assert grading_vocabulary(cxd).labels == (*cxd.labels, NORMAL)
    assert grading_vocabulary(M3DS_SUBSETS["BUSI"]) is M3DS_SUBSETS["BUSI"]


@pytest.mark.parametrize("answer,n", [("No abnormality is found.", 0), ("It is [SEG].", 1),
                                      ("The findings are a [seg] and b [SEG].", 2)])
def test_n_seg(answer: str, n: int) -> None:
    assert n_seg(answer) == n


def test_gives_mask_needs_a_non_empty_mask() -> None:
    assert not gives_mask([])          # no [SEG]
    assert not gives_mask([0, 0])      # [SEG]s with empty masks
    assert gives_mask([0, 5])


def test_negative_scores_by_hand() -> None:
    # negatives: no [SEG] (right), an empty mask (right), a mask (false positive);
    # positives: a mask (found), no mask (missed).
    negative = [True, True, True, False, False]
    gave = [gives_mask([]), gives_mask([0]), gives_mask([7]), gives_mask([3]), gives_mask([])]
    s = negative_scores(negative, gave)
    assert s["N-Acc"] == pytest.approx(2 / 3)
    assert s["FP-rate"] == pytest.approx(1 / 3)
    assert s["miss-rate"] == pytest.approx(1 / 2)


def test_negative_scores_undefined_without_samples_of_a_kind() -> None:
    s = negative_scores([False, False], [True, False])
    assert math.isnan(s["N-Acc"]) and math.isnan(s["FP-rate"]) and s["miss-rate"] == 0.5
    assert math.isnan(negative_scores([True], [False])["miss-rate"])
    with pytest.raises(ValueError, match="2 negative flags but 1"):
        negative_scores([True, False], [True])


@pytest.mark.parametrize("paths,out", [([True], True), ([False], False), ([True, False], True),
                                       ([False, True], True), ([True, False, False], False),
                                       ([False, True, True], True), ([False, True, True, False], True),
                                       ([False, False, False, True], False)])
def test_vote_majority_ties_give_the_mask(paths: list[bool], out: bool) -> None:
    assert vote_gives_mask(paths) is out
