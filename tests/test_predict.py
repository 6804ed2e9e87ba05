"""`sim4seg predict` on real images of any mode: answer printed, mask/overlay/JSON written, bad files named."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from PIL import Image

from sim4seg.cli import main
from sim4seg.data.synthetic import write_synthetic
from sim4seg.training import train

ROOT = Path(__file__).resolve().parents[1]
BUSI = ROOT.parent / "shared" / "realdata" / "busi" / "Dataset_BUSI_with_GT" / "benign" / "benign (1).png"


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("pred")
    data = write_synthetic(base / "data", n=12, seed=2, progress=False)
    with initialize_config_dir(config_dir=str(ROOT / "sim4seg" / "configs"), version_base=None):
        cfg = compose("train", overrides=["model=tiny", f"data.root={data}", f"train.output_dir={base / 'run'}",
                                          "train.max_steps=1", "train.micro_batch=2", "train.grad_accum=1",
                                          "train.warmup_steps=1", "train.eval_every=0", "train.save_every=0",
                                          "train.progress=false", "wandb.mode=disabled"])
    train(cfg)
    return base / "run"


@pytest.mark.parametrize("mode", ["L", "RGB", "RGBA", "I;16"])
def test_predict_writes_mask_overlay_and_json(run, tmp_path, capsys, mode):
    if BUSI.exists():
        img = Image.open(BUSI).convert("L")
    else:  # real samples live beside the repository; fall back to a synthetic picture
        img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (300, 420), np.uint8))
    img = img.convert(mode) if mode != "I;16" else Image.fromarray(np.asarray(img).astype(np.uint16) * 257)
    path = tmp_path / f"scan_{mode.replace(';', '')}.png"
    img.save(path)
    out = tmp_path / "out"
    assert main(["predict", "--ckpt", str(run), "--image", str(path), "--query", "Where is the tumor?",
                 "--out", str(out), "--max-new-tokens", "4"]) == 0
    printed = capsys.readouterr().out.splitlines()
    res = json.loads((out / f"{path.stem}.json").read_text())
    assert printed[0] == res["answer"]
    mask = Image.open(out / f"{path.stem}_mask.png")
    assert mask.size == img.size and set(np.unique(np.asarray(mask))) <= {0, 255}
    assert Image.open(out / f"{path.stem}_overlay.png").size == img.size
    assert res["mask_area"] == int((np.asarray(mask) > 0).sum())


def test_predict_names_a_broken_image(run, tmp_path, capsys):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n broken")
    assert main(["predict", "--ckpt", str(run), "--image", str(bad), "--query", "?"]) == 2
    err = capsys.readouterr().err
    assert "broken.png" in err and len(err.strip().splitlines()) == 1
