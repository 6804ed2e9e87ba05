"""``sim4seg export`` (issue 18.3): the export survives being moved (paths inside it are relative to it), its
files follow the umask, it carries finished.json; predict and evaluate from the new place give identical outputs.

Training and evaluation go through their entry points (``python -m sim4seg.train``, ``python -m sim4seg.eval``),
prediction through ``sim4seg.predict.predict`` (what ``sim4seg predict`` runs), so this test does not depend on
how those are built inside.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import child_env

from sim4seg.errors import UserError

# In-process training in earlier tests sets torch.distributed's rendezvous variables; children must not inherit.
ENV = child_env()
QUERY = "Please segment the lesion."


def run(*args: str, cwd: Path, ok: bool = True) -> subprocess.CompletedProcess:
    r = subprocess.run([sys.executable, "-m", *args], cwd=cwd, capture_output=True, text=True, timeout=600, env=ENV)
    if ok:
        assert r.returncode == 0, r.stderr[-3000:]
    return r


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> dict:
    """A 1-step tiny run on synthetic data, exported under umask 002 and then moved to another folder."""
    from sim4seg.data.synthetic import write_synthetic
    from sim4seg.model.export import export
    from sim4seg.predict import predict

    root = tmp_path_factory.mktemp("export")
    write_synthetic(root / "data", n=12, seed=0, progress=False)
    run("sim4seg.train", "experiment=smoke", f"data.root={root / 'data'}", f"train.output_dir={root / 'run'}",
        "train.max_steps=1", "train.save_every=0", "data.answer_format=diagnosis", cwd=root)
    old = os.umask(0o002)
    try:
        export(root / "run", root / "first" / "model")
    finally:
        os.umask(old)
    modes = {p.relative_to(root / "first" / "model"): stat.S_IMODE(p.stat().st_mode)
             for p in (root / "first" / "model").rglob("*") if p.is_file()}
    # predict and evaluate in the first place, then move the folder and do it again
    image = next(p for p in sorted((root / "data" / "images").rglob("*.png")))
    outputs = {}
    for place in ("first", "second"):
        model = root / place / "model"
        predict(model, image, QUERY, root / place / "predict")
        run("sim4seg.eval", f"ckpt={model}", f"data.root={root / 'data'}", "split=test", "mode=teacher",
            f"out={root / place / 'eval'}", "max_samples=4", "progress=false", cwd=root)
        outputs[place] = root / place
        if place == "first":
            (root / "second").mkdir()
            shutil.move(root / "first" / "model", root / "second" / "model")
    return {"root": root, "modes": modes, "outputs": outputs, "stem": image.stem}


def test_config_names_the_exports_own_files_relative_to_it(exported):
    model = exported["root"] / "second" / "model"
    text = (model / "config.yaml").read_text()
    assert str(exported["root"] / "first") not in text  # nothing points to the place it was written
    from omegaconf import OmegaConf

    cfg = OmegaConf.load(model / "config.yaml")
    assert cfg.model.lvlm.path == "lvlm" and cfg.model.sam.checkpoint == "sam.safetensors"
    assert not (exported["root"] / "first" / "model").exists()


def test_files_follow_the_umask(exported):
    modes = exported["modes"]
    assert {"trainable.safetensors", "sam.safetensors", "config.yaml", "finished.json"} <= {str(p) for p in modes}
    assert Path("lvlm") / "model.safetensors" in modes
    # umask 002 gives 0664: group-writable too, so no mode is hard-coded (safetensors alone writes 0600)
    assert set(modes.values()) == {0o664}, modes


def test_finished_record_is_copied(exported):
    model = exported["root"] / "second" / "model"
    assert json.loads((model / "finished.json").read_text()) == json.loads(
        (exported["root"] / "run" / "finished.json").read_text())


def test_predict_from_the_new_place_gives_identical_outputs(exported):
    first, second = (exported["outputs"][p] / "predict" for p in ("first", "second"))
    stem = exported["stem"]
    a, b = (json.loads((d / f"{stem}.json").read_text()) for d in (first, second))
    paths = {"image", "mask_png", "overlay_png"}  # where the outputs were written, not what they are
    assert {k: v for k, v in a.items() if k not in paths} == {k: v for k, v in b.items() if k not in paths}
    assert a["answer"]
    for name in sorted(p.name for p in first.glob("*.png")):
        assert (first / name).read_bytes() == (second / name).read_bytes(), name


def test_evaluate_from_the_new_place_gives_identical_outputs(exported):
    first, second = (exported["outputs"][p] / "eval" for p in ("first", "second"))
    rows = [[json.loads(x) for x in (d / "samples.jsonl").read_text().splitlines()] for d in (first, second)]
    assert rows[0] == rows[1] and len(rows[0]) == 4
    assert all(r["n_seg"] == 1 and r["pred_area"] > 0 for r in rows[0])  # teacher-forced: real masks decoded
    m = [json.loads((d / "metrics.json").read_text()) for d in (first, second)]
    assert m[0]["overall"] == m[1]["overall"] and m[0]["subsets"] == m[1]["subsets"]


def test_eval_refuses_an_impossible_rvls2m_setting_at_once(exported):
    out = exported["root"] / "refused"
    r = run("sim4seg.eval", f"ckpt={exported['root'] / 'second' / 'model'}", f"data.root={exported['root'] / 'data'}",
            "rvls2m=paper", "rvls2m.k=300", "rvls2m.grid=16", f"out={out}", "progress=false",
            cwd=exported["root"], ok=False)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert "rvls2m.k=300 must be an integer between 1 and 256" in r.stderr.strip().splitlines()[-1]
    assert not (out / "samples.jsonl").exists()


def test_export_refuses_an_unfinished_run(exported, tmp_path):
    from sim4seg.model.export import export

    run_dir = tmp_path / "run"
    shutil.copytree(exported["root"] / "run", run_dir)
    (run_dir / "finished.json").unlink()
    with pytest.raises(UserError, match="finished.json"):
        export(run_dir, tmp_path / "out")
    assert not (tmp_path / "out").exists()
