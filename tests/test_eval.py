"""Evaluation: files written, resume, TTS semantics (m = n = 1 equals plain generation; oracle never worse)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from transformers import LogitsProcessor, LogitsProcessorList

from sim4seg.data.synthetic import write_synthetic
from sim4seg.errors import UserError
from sim4seg.eval import evaluate
from sim4seg.model.sim4seg import Sim4Seg
from sim4seg.train import train

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = str(ROOT / "sim4seg" / "configs")


def compose_cfg(name: str, overrides: list[str]):
    with initialize_config_dir(config_dir=CONFIGS, version_base=None):
        return compose(name, overrides=overrides)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    base = tmp_path_factory.mktemp("eval")
    data = write_synthetic(base / "data", n=36, seed=3, progress=False)
    run = base / "run"
    train(compose_cfg("train", ["model=tiny", f"data.root={data}", f"train.output_dir={run}", "train.max_steps=2",
                                "train.micro_batch=2", "train.grad_accum=1", "train.warmup_steps=1",
                                "train.eval_every=0", "train.save_every=0", "train.progress=false",
                                "wandb.mode=disabled", "data.answer_format=diagnosis"]))
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
        return original(self, batch, *a, logits_processor=LogitsProcessorList([proc]), **kw)

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


