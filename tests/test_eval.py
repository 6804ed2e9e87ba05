"""Evaluation: files written, resume, TTS semantics (m = n = 1 equals plain generation; oracle never worse),
generation budget and truncation counts, batching, the embedding cache, per-sample similarity spread."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import QUICK_TRAIN, compose_cfg
from transformers import LogitsProcessor, LogitsProcessorList

from sim4seg.data.synthetic import write_synthetic
from sim4seg.errors import UserError
from sim4seg.evaluation import evaluate
from sim4seg.model.sim4seg import Sim4Seg
from sim4seg.training import train

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    base = tmp_path_factory.mktemp("eval")
    data = write_synthetic(base / "data", n=36, seed=3, progress=False)
    run = base / "run"
    train(compose_cfg("train", [*QUICK_TRAIN, f"data.root={data}", f"train.output_dir={run}", "train.max_steps=2",
                                "data.answer_format=diagnosis"]))
    return data, run


class ForceSegThenStop(LogitsProcessor):
    """A random model rarely says [SEG]: make step 0 say it and step 2 end, so masks exist to be scored."""

    def __init__(self, seg_id: int, eos_id: int, prompt_len: int):
        self.seg_id, self.eos_id, self.prompt_len = seg_id, eos_id, prompt_len

    def __call__(self, input_ids, scores):
        step = input_ids.shape[1] - self.prompt_len
        if step in (0, 2):
            forced = torch.full_like(scores, -1e9)
            forced[:, self.seg_id if step == 0 else self.eos_id] = 0
            return forced
        return scores


@pytest.fixture
def force_seg(monkeypatch):
    original = Sim4Seg.generate

    def generate(self, batch, *a, **kw):
        proc = ForceSegThenStop(self.seg_token_id, kw["eos_token_id"], batch["input_ids"].shape[1])
        kw["logits_processor"] = LogitsProcessorList([proc, *(kw.get("logits_processor") or [])])
        return original(self, batch, *a, **kw)

    monkeypatch.setattr(Sim4Seg, "generate", generate)


def ev(data, run, out, *extra):
    return evaluate(compose_cfg("eval", [f"ckpt={run}", f"data.root={data}", f"out={out}", "max_new_tokens=6",
                                         "progress=false", "batch_size=3", "overlays_per_subset=1", *extra]))


def rows(out: Path) -> list[dict]:
    return [json.loads(x) for x in (out / "samples.jsonl").read_text().splitlines()]


def test_teacher_and_generate_write_every_file(setup, tmp_path, force_seg):
    data, run = setup
    for mode in ("teacher", "generate"):
        res = ev(data, run, tmp_path / mode, f"mode={mode}")
        out = tmp_path / mode
        assert (out / "metrics.json").exists() and (out / "metrics.md").exists()
        assert len(rows(out)) == res["n_samples"] + res["n_errors"] > 0
        md = (out / "metrics.md").read_text()
        shorts = {"SynthChest": "SChest", "SynthDerm": "SDerm", "SynthUS": "SUS"}
        header = "| Metric | " + " | ".join(shorts[s] for s in res["subsets"]) + " | Avg. |"
        assert header in md and "| Method | gIoU | cIoU | Acc |" in md
        for k in ("gIoU", "cIoU", "Dice"):
            assert 0 <= res["overall"][k] <= 100
        assert ("Acc" in res["overall"]) == (mode == "generate")
    gen = rows(tmp_path / "generate")
    assert all(r["n_seg"] == 1 and "flags" in r and r["answer"].startswith("[SEG]") for r in gen)
    assert list((tmp_path / "generate" / "overlays").glob("*.png"))
    teacher = json.loads((tmp_path / "teacher" / "metrics.json").read_text())
    assert teacher["max_new_tokens"] is None and teacher["overall"]["truncated"] is None  # nothing generated


def test_interrupted_eval_resumes_to_identical_metrics(setup, tmp_path, force_seg):
    data, run = setup
    full = ev(data, run, tmp_path / "full")
    ev(data, run, tmp_path / "part", "max_samples=4")  # stops early, like a killed run
    assert len(rows(tmp_path / "part")) == 4
    with open(tmp_path / "part" / "samples.jsonl", "a") as f:
        f.write('{"id": "cut mid-wr')  # a line cut by a kill: redone, not crashed on
    resumed = ev(data, run, tmp_path / "part")
    ids = [r["id"] for r in rows(tmp_path / "part") if "id" in r]
    assert len(set(ids)) == full["n_samples"]
    for key in ("overall", "subsets", "avg"):
        assert resumed[key] == full[key]


def test_tts_with_one_path_and_one_mask_equals_plain_generation(setup, tmp_path, force_seg):
    data, run = setup
    ev(data, run, tmp_path / "plain")
    ev(data, run, tmp_path / "tts", "tts.m=1", "tts.n=[1,3]", "tts.flip_p=0.3")
    plain = {r["id"]: r for r in rows(tmp_path / "plain")}
    for r in rows(tmp_path / "tts"):
        one = r["tts"]["m=1,n=1"]
        assert (one["inter"], one["union"]) == (plain[r["id"]]["inter"], plain[r["id"]]["union"])


def test_oracle_is_never_worse_than_other_selections(setup, tmp_path, force_seg):
    data, run = setup
    res = ev(data, run, tmp_path / "t", "tts.m=[1,2]", "tts.n=[1,4]", "tts.flip_p=0.3", "tts.k_jitter=20",
             "tts.select_mask=sam_score")
    for r in rows(tmp_path / "t"):
        for point in r["tts"].values():
            iou = point["inter"] / point["union"] if point["union"] else 1.0
            o = point["oracle"]
            assert (o["inter"] / o["union"] if o["union"] else 1.0) >= iou - 1e-12
            assert o["correct"] or not point["correct"]
    md = (tmp_path / "t" / "metrics.md").read_text()
    assert "(oracle: uses ground truth)" in md and "sam_score" in md
    for point in res["tts"].values():
        assert point["oracle"]["gIoU"] >= point["selected"]["gIoU"] - 1e-9


def test_bad_settings_fail_before_the_run(setup, tmp_path):
    data, run = setup
    with pytest.raises(UserError, match="mode"):
        ev(data, run, tmp_path / "x", "mode=sample")
    with pytest.raises(UserError, match="no usable 'val'"):
        ev(data, run, tmp_path / "x", "split=val", "data.include_subsets=[SynthUS]", "data.exclude_subsets=[SynthUS]")
    with pytest.raises(UserError, match="ckpt"):
        ev(data, tmp_path / "nope", tmp_path / "x")
    with pytest.raises(UserError, match="not a known subset"):
        ev(data, run, tmp_path / "x", "data.include_subsets=[Nope]")


def test_checkpoint_that_does_not_match_the_config_is_refused(setup, tmp_path):
    import shutil

    from omegaconf import OmegaConf

    data, run = setup
    bad = tmp_path / "bad"
    shutil.copytree(run, bad, ignore=shutil.ignore_patterns("checkpoints"))
    cfg = OmegaConf.load(bad / "config.yaml")
    cfg.model.lvlm.text.hidden_size = 96
    (bad / "config.yaml").write_text(OmegaConf.to_yaml(cfg))
    with pytest.raises(UserError, match="does not match the model config|has shape"):
        ev(data, bad, tmp_path / "x")




def test_budget_is_derived_from_the_data_and_truncated_answers_are_counted(setup, tmp_path, force_seg):
    """max_new_tokens=null: the longest answer of the data (diagnosis format) + the margin; answers cut by the
    budget are counted per subset, overall, in metrics.json and beside Acc in metrics.md."""
    from sim4seg.data.prompts import answer_for
    from sim4seg.data.schema import iter_records
    from sim4seg.evaluation.run import BUDGET_MARGIN, COT_MIN_BUDGET, generation_budget
    from sim4seg.model.checkpoint import load_run

    data, run = setup
    _, proc, _ = load_run(run)
    recs = [r for _, r in iter_records(data)]
    longest = max(len(proc.tokens(r.query, answer_for("diagnosis", r.id, r.diagnosis, None))[0]) -
                  len(proc.tokens(r.query)[0]) for r in recs)
    assert generation_budget(data, proc, "diagnosis") == longest + BUDGET_MARGIN
    assert generation_budget(data, proc, "cot") >= COT_MIN_BUDGET  # CoT answers are never cut short
    res = evaluate(compose_cfg("eval", [f"ckpt={run}", f"data.root={data}", f"out={tmp_path / 'derived'}",
                                        "progress=false", "batch_size=6", "max_samples=6"]))
    assert res["max_new_tokens"] == longest + BUDGET_MARGIN and res["overall"]["truncated"] == 0
    cut = ev(data, run, tmp_path / "cut", "max_new_tokens=2")  # [SEG] at step 0, EOS only at step 2: all cut
    assert cut["max_new_tokens"] == 2
    assert cut["overall"]["truncated"] == cut["n_samples"] == sum(s["truncated"] for s in cut["subsets"].values())
    md = (tmp_path / "cut" / "metrics.md").read_text()
    assert "| Method | gIoU | cIoU | Acc | Truncated |" in md and "| Truncated |" in md
    assert f"| {cut['n_samples']} |" in md.split("## Overall")[1]
    assert ev(data, run, tmp_path / "whole")["overall"]["truncated"] == 0


def test_batched_generation_equals_batch_size_one(setup, tmp_path, force_seg):
    data, run = setup
    ev(data, run, tmp_path / "b1", "batch_size=1")
    ev(data, run, tmp_path / "b5", "batch_size=5")  # left-padded prompts of several images in one generate call
    one, five = (sorted(rows(tmp_path / b), key=lambda r: r["id"]) for b in ("b1", "b5"))
    assert strip_spread(one) == strip_spread(five)


def strip_spread(rs: list[dict]) -> list[dict]:
    """Rows without ``sim_std``, checked here to float tolerance: a diagnostic statistic of the hidden states,
    which batched matmuls round differently in the last bits (masks, answers and counts stay exact)."""
    for r in rs:
        s = r.pop("sim_std", None)
        r["sim_std"] = None if s is None else [round(x, 4) for x in s]
    return rs


def test_sam_embeddings_are_reused_across_evaluations_of_a_checkpoint(setup, tmp_path, force_seg, monkeypatch):
    import shutil

    from sim4seg.model.embedding_cache import EmbeddingCache

    data, run = setup
    run = shutil.copytree(run, tmp_path / "run", ignore=shutil.ignore_patterns("checkpoints", "sam_embedding_cache"))
    stats = []
    original = EmbeddingCache.__call__

    def spy(self, sam_images):
        h, m = self.hits, self.misses
        out = original(self, sam_images)
        stats.append((self.hits - h, self.misses - m))
        return out

    monkeypatch.setattr(EmbeddingCache, "__call__", spy)
    first = ev(data, run, tmp_path / "first", "mode=teacher")
    assert sum(m for _, m in stats) == first["n_samples"] and (run / "sam_embedding_cache").is_dir()
    stats.clear()
    second = ev(data, run, tmp_path / "second", "mode=generate")
    assert sum(h for h, _ in stats) == second["n_samples"] and sum(m for _, m in stats) == 0


def test_similarity_spread_is_written_per_sample(setup, tmp_path, force_seg, monkeypatch):
    """Where the model reports Eq. 4's spread (Decoded.sim_std), samples.jsonl carries it in both modes."""
    data, run = setup
    original = Sim4Seg.segment

    def segment(self, *a, **kw):
        out = original(self, *a, **kw)
        for d in out:
            d.sim_std = torch.full((d.logits.shape[0],), 2.5)
        return out

    monkeypatch.setattr(Sim4Seg, "segment", segment)
    for mode in ("teacher", "generate"):
        ev(data, run, tmp_path / mode, f"mode={mode}", "max_samples=3")
        assert all(r["sim_std"] == [2.5] for r in rows(tmp_path / mode))
