"""Images with no finding: the answer without [SEG], its parsing and grading, N-Acc / FP-rate / miss-rate."""

from __future__ import annotations

import json
import math

import pytest
import torch
from conftest import QUICK_TRAIN, compose_cfg

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


# ---------------------------------------------------------------------------------------------------------------
# end to end: a synthetic set with negatives and several targets trains and evaluates


@pytest.fixture(scope="module")
def clinical_run(tmp_path_factory):
    from sim4seg.data.synthetic import write_synthetic
    from sim4seg.training import train

    base = tmp_path_factory.mktemp("clinical")
    data = write_synthetic(base / "data", n=36, seed=3, progress=False, negatives=0.25, multi_target=0.25)
    run = base / "run"
    train(compose_cfg("train", [*QUICK_TRAIN, f"data.root={data}", f"train.output_dir={run}", "train.max_steps=2",
                                "data.answer_format=diagnosis"]))
    return data, run


def _evaluate(data, run, out, *extra):
    from sim4seg.evaluation import evaluate

    return evaluate(compose_cfg("eval", [f"ckpt={run}", f"data.root={data}", f"out={out}", "max_new_tokens=8",
                                         "progress=false", "batch_size=3", "overlays_per_subset=1", *extra]))


def test_dataset_gives_no_target_to_negatives_and_one_per_target(clinical_run, tiny) -> None:
    from sim4seg.data.dataset import M3DSDataset

    data, _ = clinical_run
    _, proc = tiny
    ds = M3DSDataset(data, "train", proc, "diagnosis")
    neg = next(i for i, r in enumerate(ds.records) if r.is_negative)
    several = next(i for i, r in enumerate(ds.records) if r.targets)
    assert ds[neg]["masks"].shape[0] == 0  # no [SEG] in its answer: no mask loss
    s = ds[several]
    assert s["masks"].shape[0] == len(ds.records[several].targets) == 2
    assert not torch.equal(s["masks"][0], s["masks"][1])  # each [SEG] its own finding


def test_negatives_and_targets_evaluate_with_the_clinical_keys(clinical_run, tmp_path) -> None:
    from sim4seg.evaluation.clinical import CLINICAL_KEYS

    data, run = clinical_run
    for mode in ("teacher", "generate"):
        res = _evaluate(data, run, tmp_path / mode, f"mode={mode}")
        rows = [json.loads(x) for x in (tmp_path / mode / "samples.jsonl").read_text().splitlines()]
        assert any(r["negative"] for r in rows) and all("gave_mask" in r for r in rows)
        for part in [res["overall"], *res["subsets"].values()]:
            assert set(CLINICAL_KEYS) <= set(part)
            assert all(v is None or 0 <= v <= 100 for v in (part[k] for k in CLINICAL_KEYS))
        assert res["overall"]["N-Acc"] is not None and res["overall"]["gIoU_pos"] is not None
        if mode == "teacher":  # the reference answers: negatives say "no finding", targets carry their labels
            assert res["overall"]["N-Acc"] == 100.0
            several = [r for r in rows if "pairs" in r]
            assert several and all([p["label"] for p in r["pairs"]] == [p["label"] for p in sorted(
                r["pairs"], key=lambda p: p["target"])] for r in several)
            assert all("pointing" in r for r in rows if not r["negative"])
        assert "N-Acc" in (tmp_path / mode / "metrics.md").read_text()


def test_trivial_baselines_beside_n_acc(clinical_run, tmp_path, capsys) -> None:
    from sim4seg.evaluation.baselines import baselines, main

    data, run = clinical_run
    _evaluate(data, run, tmp_path / "g", "mode=generate")
    base = baselines(data, "test")
    assert base["n_negatives"] > 0
    never, always = base["empty"], base["full"]
    assert (never["N-Acc"], never["FP-rate"], never["miss-rate"]) == (100.0, 0.0, 100.0)
    assert (always["N-Acc"], always["FP-rate"], always["miss-rate"]) == (0.0, 100.0, 0.0)
    assert never["gIoU"] > never["gIoU_pos"] == 0.0  # a negative answered with no mask scores 1
    main(["--data", str(data), "--split", "test", "--results", str(tmp_path / "g")])
    out = capsys.readouterr().out
    assert "| gIoU_pos | cIoU_pos | N-Acc | FP-rate | miss-rate | Acc |" in out
    assert "never a mask" in out and "always a mask" in out and "N-Acc" in out.splitlines()[-1]
