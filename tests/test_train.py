"""Training engine: DeepSpeed on CPU, resume after a kill, two gloo ranks (also with one rank's micro-batch
unreadable), export, refusal of mixed runs and of silent setting changes on resume, Ctrl-C."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from sim4seg.data.synthetic import write_synthetic

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONWARNINGS": "ignore", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}
BASE = ["model=tiny", "wandb.mode=disabled", "train.progress=false", "train.micro_batch=2", "train.grad_accum=2",
        "train.warmup_steps=2", "train.eval_every=0", "train.lr=1e-3", "data.answer_format=diagnosis"]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return write_synthetic(tmp_path_factory.mktemp("synth") / "d", n=40, seed=1, progress=False)


def train_cmd(data: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "sim4seg.train", *BASE, f"data.root={data}", f"train.output_dir={out}", *extra]


def run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600, **kw)


def losses(out: Path) -> list[tuple[int, float]]:
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines() if x]
    return [(r["step"], r["loss"]) for r in rows if "loss" in r]


@pytest.fixture(scope="module")
def reference(data, tmp_path_factory) -> Path:
    """An uninterrupted 8-step run."""
    out = tmp_path_factory.mktemp("ref") / "run"
    r = run(train_cmd(data, out, "train.max_steps=8", "train.save_every=2"))
    assert r.returncode == 0, r.stderr[-3000:]
    return out


def test_training_lowers_the_loss(reference):
    ls = [loss for _, loss in losses(reference)]
    assert len(ls) == 8
    assert sum(ls[-3:]) / 3 < sum(ls[:3]) / 3, ls
    assert (reference / "trainable.safetensors").exists()
    assert (reference / "config.yaml").exists()
    assert json.loads((reference / "finished.json").read_text()) == {"steps_done": 8, "steps_planned": 8}
    groups = json.loads((reference / "run.json").read_text())["trainable_params"]
    assert groups["lora"] > 0 and groups["decoder"] > 0 and groups["phi"] > 0 and groups["other"] == 0


def test_killed_run_resumes_to_identical_losses_and_weights(data, reference, tmp_path):
    out = tmp_path / "run"
    proc = subprocess.Popen(train_cmd(data, out, "train.max_steps=8", "train.save_every=2"), cwd=ROOT, env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 300
    while time.time() < deadline:  # kill once step 5 was logged: the latest checkpoint is step 4
        if (out / "metrics.jsonl").exists() and len(losses(out)) >= 5:
            break
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert len(losses(out)) < 8, "the run finished before it could be killed"
    r = run(train_cmd(data, out, "train.max_steps=8", "train.save_every=2", "train.resume=true"))
    assert r.returncode == 0, r.stderr[-3000:]
    assert "resumed from" in r.stdout
    assert losses(out) == losses(reference)
    from safetensors.torch import load_file

    a, b = load_file(str(out / "trainable.safetensors")), load_file(str(reference / "trainable.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_output_dir_of_another_run_is_refused(data, reference, tmp_path):
    r = run(train_cmd(data, reference, "train.max_steps=2"))
    assert r.returncode != 0 and "train.resume=true" in r.stderr
    r = run(train_cmd(data, reference, "train.max_steps=8", "train.resume=true", "model.lora.r=4"))
    assert r.returncode != 0 and "different model" in r.stderr and "model.lora.r (8 -> 4)" in r.stderr
    assert "Traceback" not in r.stderr


def test_resume_refuses_changed_settings_unless_allowed_and_records_them(data, reference, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(reference, out)
    original = (out / "config.yaml").read_text()
    changed = ("train.max_steps=9", "train.save_every=2", "train.resume=true", "train.lr=5e-3", "loss.bce=9")
    r = run(train_cmd(data, out, *changed))
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "train.lr (0.001 -> 0.005)" in r.stderr and "loss.bce" in r.stderr and "train.max_steps" in r.stderr
    assert "train.allow_config_change=true" in r.stderr
    r = run(train_cmd(data, out, *changed, "train.allow_config_change=true"))
    assert r.returncode == 0, r.stderr[-3000:]
    assert (out / "config.yaml").read_text() == original  # the config of the first steps stays
    (change,) = [json.loads(x) for x in (out / "config_changes.jsonl").read_text().splitlines()]
    assert change["step"] == 8
    assert change["changes"] == {"loss.bce": [2.0, 9], "train.lr": [0.001, 0.005], "train.max_steps": [8, 9]}
    assert json.loads((out / "finished.json").read_text()) == {"steps_done": 9, "steps_planned": 9}
    assert [s for s, _ in losses(out)] == list(range(1, 10))


def test_data_root_without_records_is_a_one_line_error(tmp_path):
    # --local_rank as the deepspeed launcher appends it must not trip Hydra
    r = run(train_cmd(tmp_path / "nothing", tmp_path / "run", "train.max_steps=1", "--local_rank=0"))
    assert r.returncode == 2
    assert "records.jsonl not found" in r.stderr and "Traceback" not in r.stderr


def test_two_gloo_ranks_train_save_and_resume(data, tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29631",
           "-m", "sim4seg.train", *BASE, f"data.root={data}", f"train.output_dir={out}", "train.max_steps=2"]
    r = run(cmd)
    assert r.returncode == 0, r.stderr[-3000:]
    tag = (out / "checkpoints" / "latest").read_text().strip()
    shards = sorted(p.name for p in (out / "checkpoints" / tag).glob("*optim_states.pt"))
    assert len(shards) == 2, shards  # ZeRO-2 partitions the optimizer state over both ranks
    r = run([*cmd[:-1], "train.max_steps=3", "train.resume=true", "train.allow_config_change=true"])
    assert r.returncode == 0, r.stderr[-3000:]
    assert [s for s, _ in losses(out)] == [1, 2, 3]
    assert json.loads((out / "config_changes.jsonl").read_text()) == {"step": 2, "changes": {"train.max_steps": [2, 3]}}


def test_two_ranks_with_one_rank_micro_batch_unreadable_take_the_same_steps(data, tmp_path):
    """Rank 1's whole first micro-batch is unreadable: its samples are replaced by others of rank 1's shard, so
    both ranks take the same steps. Before, rank 1 skipped the micro-batch, so its epoch (7 micro-batches of 2,
    one accumulation window) ended without an optimizer step while rank 0 waited in ZeRO's gradient reduction:
    a hang, which the timeout turns into a failure."""
    from sim4seg.data.dataset import ResumableSampler, select_records

    root = tmp_path / "d"
    shutil.copytree(data, root)
    records, _, _ = select_records(root, "train")
    order = ResumableSampler([r.subset for r in records], seed=42, rank=1, world=2).order()
    bad = [records[i] for i in order[:2]]  # train.micro_batch=2, train.seed=42, epoch 0
    for rec in bad:
        (root / rec.image).write_bytes(b"not an image")
    out = tmp_path / "run"
    assert len(records) == 28  # 14 per rank: 7 micro-batches, one window of train.grad_accum=7
    base = [x for x in BASE if not x.startswith("train.grad_accum=")]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29633",
           "-m", "sim4seg.train", *base, f"data.root={root}", f"train.output_dir={out}", "train.grad_accum=7",
           "train.epochs=1", "data.max_skip_fraction=0.5"]
    r = subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=240)  # a hang fails here
    assert r.returncode == 0, r.stderr[-3000:]
    assert json.loads((out / "finished.json").read_text()) == {"steps_done": 1, "steps_planned": 1}
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in rows if "loss" in x] == [1]
    assert [x["skipped"] for x in rows if "epoch_end" in x] == [2]  # the epoch's report, summed over ranks
    assert rows[-1]["final"] and rows[-1]["skipped"] == 2
    for rec in bad:
        assert f"rank 1: skipped {root / rec.image}" in r.stdout + r.stderr


def test_ctrl_c_prints_where_to_resume_in_one_line(data, tmp_path):
    out = tmp_path / "run"
    proc = subprocess.Popen(train_cmd(data, out, "train.max_steps=200", "train.save_every=2"), cwd=ROOT, env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.time() + 300
    while time.time() < deadline and not ((out / "metrics.jsonl").exists() and len(losses(out)) >= 3):
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C sends to the terminal's process group
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-3000:]
    assert "Traceback" not in err and "KeyboardInterrupt" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"interrupted; continue from {out / 'checkpoints' / 'step'}"), last
    assert last.endswith("train.resume=true") and f"train.output_dir={out}" in last
    assert not (out / "finished.json").exists()


def test_export_then_load_gives_identical_outputs(reference, data, tmp_path):
    from sim4seg.data.dataset import M3DSDataset, collate
    from sim4seg.model.checkpoint import load_run
    from sim4seg.model.export import export

    out = export(reference, tmp_path / "exported")
    a, proc, _ = load_run(reference)
    b, proc_b, _ = load_run(out)
    assert proc_b.n_image_tokens == proc.n_image_tokens
    ds = M3DSDataset(data, "test", proc, "diagnosis")
    batch = collate(proc, [ds[0], ds[1]])
    a.eval(), b.eval()
    with torch.no_grad():
        oa, ob = a(batch), b(batch)
    for da, db in zip(oa.masks, ob.masks):
        torch.testing.assert_close(da.logits, db.logits, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(oa.losses["txt"], ob.losses["txt"], rtol=1e-5, atol=1e-5)


def test_missing_package_is_one_line(tmp_path):
    # -S hides site-packages: the entry point must name what is missing instead of raising an import traceback
    r = subprocess.run([sys.executable, "-S", "-m", "sim4seg.train"], cwd=tmp_path, capture_output=True, text=True,
                       env={**ENV, "PYTHONPATH": str(ROOT)})
    assert r.returncode == 2
    assert r.stderr.startswith("error: missing package(s) torch") and len(r.stderr.strip().splitlines()) == 1
