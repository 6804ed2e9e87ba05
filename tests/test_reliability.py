"""Bad input end to end: `data check`, training (skip / raise, the skip limit, records without the answer's
fields, a plan without steps) and evaluation over a matrix of damaged files and records; kills during training
and evaluation; safe loading."""

from __future__ import annotations

import copy
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import compose_cfg
from PIL import Image

from sim4seg.data.check import check_dataset
from sim4seg.data.synthetic import write_synthetic
from sim4seg.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
MAX_PIXELS = 30_000  # synthetic images are at most 160 x 160 = 25,600 pixels


def read(root: Path) -> list[dict]:
    return [json.loads(x) for x in (root / "records.jsonl").read_text().splitlines()]


def write(root: Path, recs: list[dict], extra_lines: tuple[str, ...] = ()) -> None:
    (root / "records.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs) + "".join(extra_lines))


def png_bytes(img: Image.Image, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt)
    return buf.getvalue()


# Each case damages the record it gets (in place, files included) and says what a report must mention.
def _truncate(p: Path) -> None:
    p.write_bytes(p.read_bytes()[: len(p.read_bytes()) // 2])


def case_truncated_png(root, r):
    _truncate(root / r["image"])
    return "truncated"


def case_truncated_jpeg(root, r):
    img = Image.open(root / r["image"]).convert("RGB")
    r["image"] = r["image"].replace(".png", ".jpg")
    (root / r["image"]).write_bytes(png_bytes(img, "JPEG")[:600])
    return "truncated"


def case_zero_byte(root, r):
    (root / r["image"]).write_bytes(b"")
    return "empty"


def case_not_an_image(root, r):
    (root / r["image"]).write_text("this is not a picture")
    return "not a readable image"


def case_missing_file(root, r):
    (root / r["image"]).unlink()
    return "not found"


def case_mask_wrong_size(root, r):
    m = Image.open(root / r["mask"])
    m.resize((m.width + 3, m.height)).save(root / r["mask"])
    return "but its image is"


def case_mask_zero_one(root, r):
    m = np.asarray(Image.open(root / r["mask"])) // 255
    Image.fromarray(m.astype(np.uint8)).save(root / r["mask"])
    return "expected only 0 and 255"


def case_mask_jpeg_noise(root, r):
    m = Image.open(root / r["mask"])
    r["mask"] = r["mask"].replace(".png", ".jpg")
    (root / r["mask"]).write_bytes(png_bytes(m, "JPEG"))
    return "expected only 0 and 255"


def case_mask_rgb(root, r):
    Image.open(root / r["mask"]).convert("RGB").save(root / r["mask"])
    return "single-channel"


def case_bomb(root, r):
    Image.new("RGB", (200, 200)).save(root / r["image"])
    return "exceeds the limit"


def case_unknown_subset(root, r):
    r["subset"] = "Nope"
    return "unknown subset"


def case_unknown_label(root, r):
    r["diagnosis"] = ["zebra"]
    return "not in the"


def case_path_dotdot(root, r):
    r["image"] = "../outside.png"
    return "escapes the dataset folder"


def case_path_absolute(root, r):
    r["image"] = str((root / r["image"]).resolve())
    return "is absolute"


BAD = {name[5:]: fn for name, fn in dict(globals()).items() if name.startswith("case_")}


def case_ok_16bit(root, r):
    a = (np.asarray(Image.open(root / r["image"]).convert("L")).astype(np.uint16) * 257)
    Image.fromarray(a).save(root / r["image"])


def case_ok_palette(root, r):
    Image.open(root / r["image"]).convert("P", palette=Image.ADAPTIVE).save(root / r["image"])


def case_ok_rgba(root, r):
    Image.open(root / r["image"]).convert("RGBA").save(root / r["image"])


def case_ok_gray(root, r):
    Image.open(root / r["image"]).convert("L").save(root / r["image"])


ODD_BUT_FINE = {"16bit": case_ok_16bit, "palette": case_ok_palette, "rgba": case_ok_rgba, "gray": case_ok_gray}


@pytest.fixture(scope="module")
def clean(tmp_path_factory) -> Path:
    return write_synthetic(tmp_path_factory.mktemp("clean") / "d", n=36, seed=5, progress=False)


def damaged_copy(clean: Path, dst: Path, cases: dict, split: str = "train") -> tuple[Path, dict[str, str]]:
    """A copy of ``clean`` where the i-th record of ``split`` gets case i; returns {record id: expected text}."""
    shutil.copytree(clean, dst)
    recs = read(dst)
    targets = [r for r in recs if r["split"] == split]
    expect = {}
    for (name, fn), r in zip(cases.items(), targets):
        expect[r["id"]] = fn(dst, r) or name
    write(dst, recs)
    return dst, expect


@pytest.mark.parametrize("name", sorted(BAD))
def test_data_check_names_record_file_and_reason(clean, tmp_path, name):
    root, expect = damaged_copy(clean, tmp_path / "d", {name: BAD[name]})
    (rid, text), = expect.items()
    report = check_dataset(root, max_pixels=MAX_PIXELS, progress=False)
    lines = [p.line() for p in report.problems]
    assert any(rid in ln and text in ln for ln in lines), lines
    assert len(report.problems) == 1, lines


def test_data_check_record_level_problems(clean, tmp_path):
    root = tmp_path / "d"
    shutil.copytree(clean, root)
    recs = read(root)
    write(root, recs + [recs[0]], extra_lines=('{"id": "broken", "subset": \n',))
    lines = [p.line() for p in check_dataset(root, max_pixels=MAX_PIXELS, progress=False).problems]
    assert any("duplicate id" in ln and recs[0]["id"] in ln for ln in lines), lines
    assert any("malformed JSON" in ln and "records.jsonl:" in ln for ln in lines), lines


@pytest.mark.parametrize("name", sorted(ODD_BUT_FINE))
def test_unusual_but_valid_images_are_accepted(clean, tmp_path, name):
    root, _ = damaged_copy(clean, tmp_path / "d", {name: ODD_BUT_FINE[name]})
    assert check_dataset(root, max_pixels=MAX_PIXELS, progress=False).ok


TRAIN = ["model=tiny", "wandb.mode=disabled", "train.progress=false", "train.micro_batch=2", "train.grad_accum=1",
         "train.warmup_steps=1", "train.eval_every=0", "train.save_every=0", "data.answer_format=diagnosis",
         f"data.max_pixels={MAX_PIXELS}"]


@pytest.fixture(scope="module")
def all_bad(clean, tmp_path_factory) -> tuple[Path, dict[str, str]]:
    """Every file-level case in the train split and again in the test split, plus bad lines."""
    root = tmp_path_factory.mktemp("bad") / "d"
    record_level = ("unknown_subset", "unknown_label", "path_dotdot", "path_absolute")
    file_cases = [k for k in BAD if k not in record_level]
    root, expect = damaged_copy(clean, root, {k: BAD[k] for k in file_cases[:5]})
    recs = read(root)
    tests = [r for r in recs if r["split"] == "test"]
    assert len(tests) >= 6
    for name, r in zip([*record_level, *file_cases[5:]], tests):
        expect[r["id"]] = BAD[name](root, r)
    write(root, recs + [dict(recs[0])], extra_lines=("not json\n",))  # a duplicate id and a malformed line
    return root, expect


def test_training_skips_and_counts_bad_records(all_bad, tmp_path):
    from sim4seg.training import train

    root, expect = all_bad
    bad_train = sum(1 for r in read_lines(root) if r and r.get("split") == "train" and r["id"] in expect)
    out = tmp_path / "run"
    final = train(compose_cfg("train", [*TRAIN, f"data.root={root}", f"train.output_dir={out}", "train.epochs=1",
                                "train.max_steps=100", "data.max_skip_fraction=1"]))
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert final["skipped"] == bad_train  # files that fail to load, counted as they come
    # records.jsonl lines unusable at all: the malformed line, the duplicate id, and the record-level cases
    # (unknown subset/label, escaping paths) placed in the test split
    assert final["skipped_records"] == 2 + 4
    epoch_end = [r for r in rows if "epoch_end" in r]
    assert epoch_end and epoch_end[0]["skipped"] == final["skipped"]
    assert all(np.isfinite(r["loss"]) for r in rows if "loss" in r)


def read_lines(root: Path) -> list[dict | None]:
    out = []
    for x in (root / "records.jsonl").read_text().splitlines():
        try:
            out.append(json.loads(x))
        except json.JSONDecodeError:
            out.append(None)
    return out


def test_training_with_raise_stops_before_the_first_step(all_bad, tmp_path):
    from sim4seg.training import train

    root, _ = all_bad
    out = tmp_path / "run"
    with pytest.raises(UserError) as e:
        train(compose_cfg("train", [*TRAIN, f"data.root={root}", f"train.output_dir={out}", "data.on_error=raise",
                            "train.max_steps=2"]))
    assert "records.jsonl" in str(e.value) or "record" in str(e.value)
    assert not (out / "metrics.jsonl").exists()


def test_raise_pre_check_runs_no_image_transform(tiny, clean, tmp_path, monkeypatch):
    """data.on_error=raise checks files, sizes, mask values and token lengths without the vision/SAM transforms
    (before, it built every sample through them)."""
    from sim4seg.data.dataset import M3DSDataset
    from sim4seg.model.processor import Processor

    def no_transform(self, image):
        raise AssertionError("the pre-check ran an image transform")

    monkeypatch.setattr(Processor, "vision", no_transform)
    monkeypatch.setattr(Processor, "sam", no_transform)
    _, proc = tiny
    assert len(M3DSDataset(clean, "train", proc, "diagnosis", "raise", MAX_PIXELS))
    root, expect = damaged_copy(clean, tmp_path / "d", {k: BAD[k] for k in ("truncated_png", "mask_zero_one")})
    with pytest.raises(UserError) as e:
        M3DSDataset(root, "train", proc, "diagnosis", "raise", MAX_PIXELS)
    assert any(rid in str(e.value) or text in str(e.value) for rid, text in expect.items()), str(e.value)
    short = copy.copy(proc)
    short.max_length = 8
    with pytest.raises(UserError, match="exceed the context"):
        M3DSDataset(clean, "train", short, "diagnosis", "raise", MAX_PIXELS)


def test_records_without_cot_stop_before_the_first_step(clean, tmp_path):
    """Converted data has "cot": null; CoT answers then stop at once, saying what to run or set (before: every
    sample was skipped and the run 'finished' at step 0 with exit code 0)."""
    from sim4seg.training import train

    root = tmp_path / "d"
    shutil.copytree(clean, root)
    write(root, [{**r, "cot": None} for r in read(root)])
    out = tmp_path / "run"
    with pytest.raises(UserError) as e:
        train(compose_cfg("train", [*TRAIN, f"data.root={root}", f"train.output_dir={out}", "data.answer_format=cot"]))
    assert "have no CoT" in str(e.value) and "sim4seg data cot" in str(e.value)
    assert "data.answer_format=diagnosis" in str(e.value)
    assert not (out / "metrics.jsonl").exists() and not (out / "finished.json").exists()


def test_too_many_unusable_samples_stop_the_run(clean, tmp_path):
    from sim4seg.training import train

    cases = {name: BAD[name] for name in ("truncated_png", "zero_byte", "not_an_image")}
    root, _ = damaged_copy(clean, tmp_path / "d", cases)  # 3 of the train split's ~24 samples (> 5%)
    out = tmp_path / "run"
    # stops as soon as the epoch's limit is certainly passed (2 > 0.05 x 25), not at the epoch's end
    with pytest.raises(UserError, match=r"\d of \d+ training samples of epoch 0 could not be used, more than "
                                        r"data.max_skip_fraction=0.05"):
        train(compose_cfg("train", [*TRAIN, f"data.root={root}", f"train.output_dir={out}", "train.epochs=1"]))
    assert not (out / "finished.json").exists()
    final = train(compose_cfg("train", [*TRAIN, f"data.root={root}", f"train.output_dir={tmp_path / 'ok'}", "train.epochs=1",
                                "data.max_skip_fraction=0.2"]))
    assert final["skipped"] == 3
    assert json.loads((tmp_path / "ok" / "finished.json").read_text())["steps_done"] == final["step"] > 0


def test_a_plan_without_optimizer_steps_is_refused(clean, tmp_path):
    """Fewer micro-batches than one accumulation window: refused before step 1 (before: exit 0 at step 0)."""
    from sim4seg.training import train

    out = tmp_path / "run"
    with pytest.raises(UserError, match="no optimizer step"):
        train(compose_cfg("train", [*TRAIN, f"data.root={clean}", f"train.output_dir={out}", "train.epochs=1",
                            "train.grad_accum=1000"]))
    assert not (out / "finished.json").exists() and not (out / "trainable.safetensors").exists()


def test_eval_reports_error_rows_and_leaves_them_out(all_bad, tmp_path):
    from sim4seg.evaluation import evaluate
    from sim4seg.training import train

    root, expect = all_bad
    run = tmp_path / "run"
    train(compose_cfg("train", [*TRAIN, f"data.root={root}", f"train.output_dir={run}", "train.max_steps=1",
                        "data.max_skip_fraction=1"]))
    out = tmp_path / "ev"
    res = evaluate(compose_cfg("eval", [f"ckpt={run}", f"data.root={root}", f"out={out}", "mode=teacher",
                                "progress=false", f"data.max_pixels={MAX_PIXELS}"]))
    rows = [json.loads(x) for x in (out / "samples.jsonl").read_text().splitlines()]
    errors = [r for r in rows if "error" in r]
    test_bad = [rid for rid, r in ((x["id"], x) for x in read_lines(root) if x) if rid in expect
                and r.get("split") == "test"]
    for rid in test_bad:  # file-level problems: an error row naming the record's reason
        assert any(r["id"] == rid and expect[rid] in r["error"] for r in errors) or any(
            rid in r["error"] for r in errors), (rid, errors)
    assert res["n_errors"] == len(errors)
    scored = [r for r in rows if "error" not in r]
    assert res["n_samples"] == len(scored)
    assert not {r["id"] for r in scored} & set(test_bad)
    assert f"{res['n_errors']} left out" in (out / "metrics.md").read_text()


ENV = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}


def test_kill_at_random_moments_including_checkpoint_writes_then_resume(clean, tmp_path):
    """SIGKILL three times at random moments of a run that checkpoints every step (so kills land in writes too);
    the resumed run's losses and weights equal an uninterrupted run's."""
    import torch
    from safetensors.torch import load_file

    base = [sys.executable, "-m", "sim4seg.train", *TRAIN, f"data.root={clean}", "train.max_steps=6",
            "train.save_every=1"]
    ref = tmp_path / "ref"
    assert subprocess.run([*base, f"train.output_dir={ref}"], cwd=ROOT, env=ENV, capture_output=True).returncode == 0
    out = tmp_path / "run"
    rng = np.random.default_rng(0)
    for _ in range(3):
        resume = (out / "checkpoints" / "latest").exists()
        p = subprocess.Popen([*base, f"train.output_dir={out}", f"train.resume={resume}"], cwd=ROOT, env=ENV,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.time() + 120
        while time.time() < deadline and not (out / "metrics.jsonl").exists():
            time.sleep(0.05)
        time.sleep(rng.uniform(0.2, 2.5))
        os.killpg(p.pid, signal.SIGKILL)
        p.wait()
    # an incomplete checkpoint directory (as a kill mid-write leaves) is never the one resumed from
    (out / "checkpoints" / "step99999999").mkdir(parents=True, exist_ok=True)
    r = subprocess.run([*base, f"train.output_dir={out}", "train.resume=true"], cwd=ROOT, env=ENV,
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]

    def losses(d: Path) -> list[tuple[int, float]]:
        return [(x["step"], x["loss"]) for x in map(json.loads, (d / "metrics.jsonl").read_text().splitlines())
                if "loss" in x]

    assert losses(out) == losses(ref)
    a, b = load_file(str(out / "trainable.safetensors")), load_file(str(ref / "trainable.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_kill_during_eval_then_rerun_gives_identical_metrics(clean, tmp_path):
    from sim4seg.training import train

    run = tmp_path / "run"
    train(compose_cfg("train", [*TRAIN, f"data.root={clean}", f"train.output_dir={run}", "train.max_steps=1"]))
    base = [sys.executable, "-m", "sim4seg.eval", f"ckpt={run}", f"data.root={clean}", "mode=teacher",
            "batch_size=1", "progress=false", "split=train"]
    full = tmp_path / "full"
    assert subprocess.run([*base, f"out={full}"], cwd=ROOT, env=ENV, capture_output=True).returncode == 0
    out = tmp_path / "killed"
    p = subprocess.Popen([*base, f"out={out}"], cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 120
    while time.time() < deadline:
        f = out / "samples.jsonl"
        if f.exists() and len(f.read_text().splitlines()) >= 3:
            break
        time.sleep(0.05)
    os.killpg(p.pid, signal.SIGKILL)
    p.wait()
    assert not (out / "metrics.json").exists()
    assert subprocess.run([*base, f"out={out}"], cwd=ROOT, env=ENV, capture_output=True).returncode == 0
    ids = [json.loads(x)["id"] for x in (out / "samples.jsonl").read_text().splitlines()]
    assert len(ids) == len(set(ids))
    a, b = (json.loads((d / "metrics.json").read_text()) for d in (out, full))
    assert {k: a[k] for k in ("overall", "subsets", "avg", "n_samples")} == \
        {k: b[k] for k in ("overall", "subsets", "avg", "n_samples")}


def test_nothing_is_unpickled_unsafely_and_remote_code_stays_off():
    src = "\n".join(p.read_text() for p in (ROOT / "sim4seg").rglob("*.py"))
    for call in re.findall(r"torch\.load\([^)]*\)", src):
        assert "weights_only=True" in call, call
    assert "trust_remote_code=True" not in src
    for preset in (ROOT / "sim4seg" / "configs" / "model").glob("*.yaml"):
        assert "trust_remote_code: true" not in preset.read_text()
    assert "WANDB_API_KEY" not in (ROOT / "sim4seg" / "configs" / "train.yaml").read_text().replace("WANDB_API_KEY in", "")
