"""The package works when installed as a wheel (not editable), from any working directory: configs are package
data, and a tiny train + eval run from a temporary directory."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import child_env

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_installed_wheel_trains_and_evaluates(tmp_path):
    wheels, target, work, src = (tmp_path / x for x in ("wheels", "site", "work", "src"))
    work.mkdir()
    # Build from a copy of the package sources: setuptools' build/ folder would otherwise keep stale modules.
    top = {"build", "runs", "results", "data", "tests", "scripts"}
    shutil.copytree(ROOT, src, ignore=lambda d, names: [
        n for n in names if n.startswith(".") or n == "__pycache__" or n.endswith(".egg-info")
        or (Path(d) == ROOT and n in top)])
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(wheels), str(src)], check=True, cwd=work)
    (wheel,) = wheels.glob("sim4seg-*.whl")
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
                   check=True, cwd=work)
    # The target shadows the editable install of this checkout; no path may lead back to the repository.
    env = child_env(PYTHONPATH=str(target), WANDB_MODE="disabled")

    def run(*args: str) -> str:
        res = subprocess.run([sys.executable, *args], cwd=work, env=env, capture_output=True, text=True,
                             timeout=600)
        assert res.returncode == 0, f"{args}: {res.stderr[-2000:]}"
        return res.stdout

    where = run("-c", "import sim4seg, sim4seg.config as c; print(sim4seg.__file__); print(c.CONFIG_DIR)")
    assert all(line.startswith(str(target)) for line in where.split()), where
    run("-m", "sim4seg.cli", "data", "synth", "--out", "data", "--n", "12", "--seed", "1")
    run("-m", "sim4seg.train", "model=tiny", "data.root=data", "train.output_dir=run", "train.max_steps=2",
        "train.micro_batch=2", "train.grad_accum=1", "train.warmup_steps=1", "train.eval_every=0",
        "train.save_every=0", "train.progress=false", "data.answer_format=diagnosis")
    run("-m", "sim4seg.eval", "ckpt=run", "data.root=data", "split=test", "mode=teacher", "out=res",
        "progress=false", "overlays_per_subset=0")
    metrics = json.loads((work / "res" / "metrics.json").read_text())
    assert metrics["overall"]["n"] > 0
