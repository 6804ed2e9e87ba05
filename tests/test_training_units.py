"""Training's pieces without a training run: the completion record, the resume rules of the run directory, the
step plan, replacement of unusable samples, trainable-parameter groups, early refusal of impossible settings."""

from __future__ import annotations

import json

import pytest
import torch
from omegaconf import OmegaConf

from sim4seg.config import compose
from sim4seg.errors import UserError
from sim4seg.model.checkpoint import require_finished, write_finished
from sim4seg.training.batches import ShardView
from sim4seg.training.checks import check_settings, planned_steps
from sim4seg.training.params import full_lm_with_lora, trainable_groups
from sim4seg.training.run_dir import RunDir


def test_require_finished_accepts_only_a_complete_record(tmp_path):
    with pytest.raises(UserError, match="not a finished training run"):
        require_finished(tmp_path)  # e.g. a run that wrote trainable.safetensors at step 0
    write_finished(tmp_path, 3, 5)
    with pytest.raises(UserError, match="stopped at step 3 of 5"):
        require_finished(tmp_path)
    (tmp_path / "finished.json").write_text("{")
    with pytest.raises(UserError, match="unreadable"):
        require_finished(tmp_path)
    write_finished(tmp_path, 0, 0)
    with pytest.raises(UserError, match="step 0 of 0"):
        require_finished(tmp_path)
    write_finished(tmp_path, 0, 0, source="somewhere")
    with pytest.raises(UserError, match="step 0 of 0"):
        require_finished(tmp_path)  # only a converted release is complete without steps
    write_finished(tmp_path, 0, 0, source="convert-lisa")
    require_finished(tmp_path)
    write_finished(tmp_path, 5, 5)
    require_finished(tmp_path)
    assert json.loads((tmp_path / "finished.json").read_text()) == {"steps_done": 5, "steps_planned": 5}


def _run_with_checkpoint(tmp_path, overrides: list[str]) -> tuple[RunDir, list[str]]:
    base = [f"train.output_dir={tmp_path}", "train.lr=1e-3", *overrides]
    run = RunDir(tmp_path)
    run.prepare(compose("train", base), rank=0)
    (run.checkpoints).mkdir()
    (run.checkpoints / "latest").write_text("step00000004")
    return run, base


def test_resume_accepts_free_keys_refuses_shaping_and_model_keys(tmp_path):
    run, base = _run_with_checkpoint(tmp_path, [])
    original = run.config.read_text()
    free = ["train.resume=true", "train.save_every=7", "train.progress=false", "data.num_workers=0",
            "wandb.mode=disabled", "train.eval_every=0"]
    assert run.prepare(compose("train", [*base, *free]), rank=0) == {}
    with pytest.raises(UserError, match=r"shape the run: data.answer_format \("):
        run.prepare(compose("train", [*base, "train.resume=true", "data.answer_format=seg"]), rank=0)
    with pytest.raises(UserError, match=r"different model/rvls2m config: rvls2m.k \(36 -> 24\)"):
        run.prepare(compose("train", [*base, "train.resume=true", "train.allow_config_change=true", "rvls2m.k=24"]),
                    rank=0)
    assert run.config.read_text() == original


def test_accepted_changes_are_recorded_and_become_the_recorded_config(tmp_path):
    run, base = _run_with_checkpoint(tmp_path, [])
    original = run.config.read_text()
    cfg = compose("train", [*base, "train.resume=true", "train.allow_config_change=true", "train.lr=5e-3"])
    changes = run.prepare(cfg, rank=0)
    assert changes == {"train.lr": [0.001, 0.005]}
    run.record_changes(4, changes)
    # the same settings again: nothing new to accept or record; the original config stays
    assert run.prepare(compose("train", [*base, "train.resume=true", "train.lr=5e-3"]), rank=0) == {}
    assert run.config.read_text() == original
    assert run.recorded_config()["train"]["lr"] == 0.005
    with pytest.raises(UserError, match=r"train.lr \(0.005 -> 0.001\)"):
        run.prepare(compose("train", [*base, "train.resume=true"]), rank=0)


def test_a_new_run_drops_the_records_of_an_earlier_one(tmp_path):
    run = RunDir(tmp_path)
    run.changes.write_text('{"step": 1, "changes": {}}\n')
    write_finished(tmp_path, 2, 2)
    run.prepare(compose("train", [f"train.output_dir={tmp_path}"]), rank=0)
    assert not run.changes.exists() and not (tmp_path / "finished.json").exists() and run.config.exists()


def test_planned_steps():
    t = OmegaConf.create({"epochs": 4, "grad_accum": 10, "micro_batch": 2, "max_steps": None})
    assert planned_steps(25, t, 1) == 8  # 2 whole windows per epoch
    assert planned_steps(4, t, 1) == 1  # windows span epochs: 16 micro-batches fill one
    with pytest.raises(UserError, match="no optimizer step"):
        planned_steps(2, t, 1)
    assert planned_steps(25, OmegaConf.merge(t, {"max_steps": 3}), 1) == 3


class FakeData(torch.utils.data.Dataset):
    def __init__(self, bad: set[int]):
        self.bad = bad

    def __getitem__(self, i: int) -> dict:
        return {"error": f"record {i} unreadable", "id": f"r{i}"} if i in self.bad else {"id": f"r{i}"}


def test_unusable_samples_are_replaced_by_the_next_usable_of_the_shard():
    view = ShardView(FakeData(bad={5, 7}), order=[3, 5, 7, 1, 9])
    assert view[0] == {"id": "r3", "errors": []}
    s = view[1]  # 5 and 7 are bad: the next usable sample of the order is 1; only 5's own failure is counted
    assert s["id"] == "r1" and [e["id"] for e in s["errors"]] == ["r5"] and s["errors"][0]["replaced_by"] == "r1"
    assert view[2]["id"] == "r1" and len(view[2]["errors"]) == 1
    with pytest.raises(UserError, match="cannot be used either"):
        ShardView(FakeData(bad={0, 1}), order=[0, 1])[0]


def test_trainable_groups_and_the_lora_with_full_language_model_warning(fresh_model):
    groups = trainable_groups(fresh_model)
    assert groups["total"] == sum(p.numel() for p in fresh_model.parameters() if p.requires_grad)
    assert groups["total"] == sum(groups[g] for g in ("lora", "lm_head", "embed_tokens", "phi", "decoder", "other"))
    assert groups["lora"] > 0 and groups["other"] == 0 and groups["all"] > groups["total"]
    assert full_lm_with_lora(fresh_model, lora_enabled=True) is None
    for name, p in fresh_model.named_parameters():  # what model.trainable=[..., language_model] does
        if "language_model" in name and "lora_" not in name:
            p.requires_grad_(True)
    warning = full_lm_with_lora(fresh_model, lora_enabled=True)
    assert warning and "model.trainable also trains the full language model" in warning
    assert trainable_groups(fresh_model)["other"] > 0
    assert full_lm_with_lora(fresh_model, lora_enabled=False) is None


def test_impossible_rvls2m_setting_is_refused_before_anything_is_built():
    with pytest.raises(UserError, match="rvls2m.k"):
        check_settings(compose("train", ["rvls2m.k=1000"]))  # k > g * g = 256
    with pytest.raises(UserError, match="data.max_skip_fraction"):
        check_settings(compose("train", ["data.max_skip_fraction=2"]))
