"""An evaluation resumes only its own rows: a rerun into the same ``out`` with another checkpoint, mode, split,
TTS setting or changed data is refused in one line naming what differs (before: the old rows were silently
reused); ``overwrite=true`` replaces them. Also the JSONL/atomic-write helpers the rows rely on."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
from conftest import QUICK_TRAIN, compose_cfg
from PIL import Image

from sim4seg.data.synthetic import write_synthetic
from sim4seg.errors import UserError
from sim4seg.evaluation import evaluate
from sim4seg.jsonl import append_jsonl, atomic_write_json, read_jsonl
from sim4seg.training import train

TRAIN = [*QUICK_TRAIN, "data.answer_format=diagnosis"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    base = tmp_path_factory.mktemp("resume")
    data = write_synthetic(base / "data", n=30, seed=7, progress=False)
    runs = []
    for steps in (1, 2):  # two checkpoints of the same config: only their weights differ
        run = base / f"run{steps}"
        train(compose_cfg("train", [*TRAIN, f"data.root={data}", f"train.output_dir={run}",
                                    f"train.max_steps={steps}"]))
        runs.append(run)
    return data, runs


def ev(data, run, out, *extra) -> dict:
    return evaluate(compose_cfg("eval", [f"ckpt={run}", f"data.root={data}", f"out={out}", "max_new_tokens=3",
                                         "progress=false", "batch_size=4", "overlays_per_subset=0", "max_samples=4",
                                         *extra]))


@pytest.mark.parametrize(("change", "named"), [
    ("ckpt", "ckpt"), ("mode=teacher", "mode (generate -> teacher)"), ("split=val", "split (test -> val)"),
    ("tts.m=4", "tts"), ("max_new_tokens=9", "max_new_tokens (3 -> 9)"), ("rvls2m=off", "rvls2m")])
def test_rerun_with_other_settings_is_refused(setup, tmp_path, change, named):
    data, (run, other) = setup
    ev(data, run, tmp_path / "out")
    extra = [f"ckpt={other}"] if change == "ckpt" else [change]
    with pytest.raises(UserError) as e:
        ev(data, run, tmp_path / "out", *extra)
    msg = str(e.value)
    assert named in msg and "out=" in msg and "overwrite=true" in msg and "\n" not in msg
    fresh = ev(data, run, tmp_path / "fresh", *extra)
    replaced = ev(data, run, tmp_path / "out", *extra, "overwrite=true")
    for key in ("mode", "split", "n_samples", "overall", "subsets"):
        assert replaced[key] == fresh[key]


def test_settings_that_do_not_change_rows_resume(setup, tmp_path):
    data, (run, _) = setup
    ev(data, run, tmp_path / "out")
    res = ev(data, run, tmp_path / "out", "batch_size=1", "max_samples=6", "progress=true", "cache_dir=null")
    assert res["n_samples"] == 6
    ids = [r["id"] for r in read_jsonl(tmp_path / "out" / "samples.jsonl")]
    assert len(ids) == len(set(ids)) == 6


def test_fixed_masks_are_not_hidden_by_old_error_rows(setup, tmp_path):
    data, (run, _) = setup
    root = tmp_path / "data"
    shutil.copytree(data, root)
    recs = [json.loads(x) for x in (root / "records.jsonl").read_text().splitlines()]
    bad = next(r for r in recs if r["split"] == "test")
    good_mask = (root / bad["mask"]).read_bytes()
    Image.fromarray(np.zeros((5, 7), np.uint8)).save(root / bad["mask"])  # wrong size: an error row
    first = ev(root, run, tmp_path / "out", "max_samples=null")
    assert first["n_errors"] == 1
    (root / bad["mask"]).write_bytes(good_mask)  # the user fixes the mask
    with pytest.raises(UserError, match="differs: data"):
        ev(root, run, tmp_path / "out", "max_samples=null")
    fixed = ev(root, run, tmp_path / "out", "max_samples=null", "overwrite=true")
    assert fixed["n_errors"] == 0 and fixed["n_samples"] == first["n_samples"] + 1


def test_a_folder_without_fingerprint_is_refused(setup, tmp_path):
    data, (run, _) = setup
    ev(data, run, tmp_path / "out")
    (tmp_path / "out" / "fingerprint.json").unlink()  # rows of an older version, or copied from elsewhere
    with pytest.raises(UserError, match="without fingerprint.json"):
        ev(data, run, tmp_path / "out")


def test_unfinished_run_is_refused(setup, tmp_path):
    data, (run, _) = setup
    copy = tmp_path / "run"
    shutil.copytree(run, copy, ignore=shutil.ignore_patterns("checkpoints", "sam_embedding_cache"))
    (copy / "finished.json").unlink()
    with pytest.raises(UserError, match="not a finished training run"):
        ev(data, copy, tmp_path / "out")


def test_jsonl_reader_and_writer(tmp_path):
    path = tmp_path / "rows.jsonl"
    append_jsonl(path, [{"id": "a"}, {"id": "b"}])
    with open(path, "a") as f:
        f.write('{"id": "c", "cut mid-wr')  # a kill mid-write
    assert [r["id"] for r in read_jsonl(path)] == ["a", "b"]
    append_jsonl(path, [{"id": "c"}])  # the partial line is cut, not glued to the next row
    assert [r["id"] for r in read_jsonl(path)] == ["a", "b", "c"]
    path.write_text('{"id": "a"}\nnot json\n{"id": "b"}\n')
    with pytest.raises(UserError, match=r"rows.jsonl:2"):
        read_jsonl(path)
    old = os.umask(0o022)
    try:
        atomic_write_json(tmp_path / "m.json", {"x": 1})
    finally:
        os.umask(old)
    assert json.loads((tmp_path / "m.json").read_text()) == {"x": 1}
    assert (tmp_path / "m.json").stat().st_mode & 0o777 == 0o644  # follows the umask
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.json", "rows.jsonl"]  # no temporary left
