"""`sim4seg predict`: one image of any format (answer printed, mask/overlay/JSON written, hand-checked pixels of
DICOM, NIfTI and 16-bit inputs), bad input refused before the model loads, and batch prediction (JSONL with COCO
RLE masks, bad files reported and skipped, resumed after an interruption)."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as coco_mask
from test_readers import write_dicom  # tests/ is on sys.path under pytest
from transformers import LogitsProcessorList

from sim4seg import inference
from sim4seg.cli import main
from sim4seg.config import compose
from sim4seg.data.synthetic import write_synthetic
from sim4seg.training import train

ROOT = Path(__file__).resolve().parents[1]
BUSI = ROOT.parent / "shared" / "realdata" / "busi" / "Dataset_BUSI_with_GT" / "benign" / "benign (1).png"
Q = "Where is the tumor?"


def tiny_run(base: Path, says_seg: bool = False) -> Path:
    """A finished run of the tiny preset: 2 steps (its answers never contain [SEG], so nothing is drawn over the
    picture), or with ``says_seg`` 6 steps on segmentation answers at a high learning rate, after which it answers
    "Sure, it is [SEG]." and masks are decoded."""
    data = write_synthetic(base / "data", n=12, seed=2, progress=False)
    steps = ["train.max_steps=6", "train.micro_batch=4", "train.lr=5e-3", "data.answer_format=seg"] if says_seg \
        else ["train.max_steps=2", "train.micro_batch=2"]
    train(compose("train", ["model=tiny", f"data.root={data}", f"train.output_dir={base / 'run'}", *steps,
                            "train.grad_accum=1", "train.warmup_steps=1", "train.eval_every=0", "train.save_every=0",
                            "train.progress=false", "wandb.mode=disabled"]))
    return base / "run"


class ForceSeg:
    """Generation says [SEG] at its first step and EOS at its second, so a 2-step model decodes a mask."""

    def __init__(self, seg_id: int, eos_id: int):
        self.seg_id, self.eos_id, self.start = seg_id, eos_id, None

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        self.start = input_ids.shape[1] if self.start is None else self.start
        forced = torch.full_like(scores, float("-inf"))
        forced[:, self.seg_id if input_ids.shape[1] == self.start else self.eos_id] = 0
        return forced


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    return tiny_run(tmp_path_factory.mktemp("pred"))


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
    assert main(["predict", "--ckpt", str(run), "--image", str(path), "--query", Q, "--out", str(out),
                 "--max-new-tokens", "4"]) == 0
    printed = capsys.readouterr().out.splitlines()
    res = json.loads((out / f"{path.stem}.json").read_text())
    assert printed[0] == res["answer"] and "diagnosis" in res and "flags" in res
    mask = Image.open(out / f"{path.stem}_mask.png")
    assert mask.size == img.size and set(np.unique(np.asarray(mask))) <= {0, 255}
    assert Image.open(out / f"{path.stem}_overlay.png").size == img.size
    assert res["mask_area"] == int((np.asarray(mask) > 0).sum())


def overlay_of(run: Path, path: Path, tmp_path: Path, *extra: str) -> np.ndarray:
    out = tmp_path / "out"
    assert main(["predict", "--ckpt", str(run), "--image", str(path), "--query", Q, "--out", str(out),
                 "--max-new-tokens", "2", *extra]) == 0
    res = json.loads((out / f"{path.name.split('.')[0]}.json").read_text())
    assert res["n_seg"] == 0  # nothing is drawn over the picture: the overlay is the picture as read
    return np.asarray(Image.open(out / f"{path.name.split('.')[0]}_overlay.png"))[..., 0]


def test_predict_dicom_nifti_16bit_with_hand_checked_pixels(run, tmp_path):
    # CT, HU = stored - 1024: the left half -1000 HU (below soft tissue's floor of -160 -> 0), the right half
    # 40 HU -> (0.5/399 + 0.5) * 255 = 127.82 -> 128.
    stored = np.full((32, 48), 24, np.uint16)
    stored[:, 24:] = 1064
    dcm = write_dicom(tmp_path / "ct.dcm", stored, RescaleSlope=1, RescaleIntercept=-1024)
    g = overlay_of(run, Path(dcm), tmp_path)
    assert g.shape == (32, 48) and (g[:, :24] == 0).all() and (g[:, 24:] == 128).all()
    assert (overlay_of(run, Path(dcm), tmp_path, "--window", "ct_lung")[:, 24:] == 236).all()  # 40 HU in lung
    # NIfTI in RAS+: the patient's right half (x >= 10) at 1000 shows on the image's left; window 500,1000.
    vol = np.zeros((20, 16, 5), np.float32)
    vol[10:] = 1000
    nii = tmp_path / "vol.nii.gz"
    nib.save(nib.Nifti1Image(vol, np.eye(4)), nii)
    g = overlay_of(run, nii, tmp_path, "--window", "500,1000")
    assert g.shape == (16, 20) and (g[:, :10] == 255).all() and (g[:, 10:] == 0).all()
    # 16-bit PNG, percentiles: 0..999 (x 60) -> value 500 at 128 (see test_readers).
    Image.fromarray(np.arange(1000, dtype=np.uint16).reshape(20, 50) * 60).save(tmp_path / "x16.png")
    g = overlay_of(run, tmp_path / "x16.png", tmp_path)
    assert g.flat[500] == 128 and g.flat[0] == 0 and g.flat[999] == 255


def _nifti_one_voxel(p: Path) -> None:
    nib.save(nib.Nifti1Image(np.ones((1, 1, 1), np.float32), np.eye(4)), p)


def _dicom_without_pixels(p: Path) -> None:
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.481.5"  # RT Plan
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = generate_uid()
    ds.save_as(p, enforce_file_format=True)


@pytest.mark.parametrize("case", ["broken", "text", "empty_question", "no_pixels", "one_voxel", "too_big"])
def test_bad_input_is_one_line_before_the_model_loads(run, tmp_path, capsys, monkeypatch, case):
    def no_model(*a, **k):
        raise AssertionError("the model was loaded before the input was checked")

    monkeypatch.setattr(inference.Predictor, "__init__", no_model)
    path, query, extra = tmp_path / "x.png", Q, []
    if case == "broken":
        path.write_bytes(b"\x89PNG\r\n\x1a\n broken")
    elif case == "text":
        path = tmp_path / "notes.txt"
        path.write_text("not an image")
    elif case == "empty_question":
        Image.fromarray(np.zeros((8, 8), np.uint8)).save(path)
        query = "   "
    elif case == "no_pixels":
        path = tmp_path / "plan.dcm"
        _dicom_without_pixels(path)
    elif case == "one_voxel":
        path = tmp_path / "one.nii.gz"
        _nifti_one_voxel(path)
    else:
        Image.fromarray(np.zeros((40, 50), np.uint8)).save(path)
        extra = ["--max-pixels", "1000"]
    assert main(["predict", "--ckpt", str(run), "--image", str(path), "--query", query, *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: ")
    expected = {"broken": "x.png: not a readable image", "text": "notes.txt: not a readable image", "empty_question":
                "question is empty", "no_pixels": "no pixel data", "one_voxel": "single voxel",
                "too_big": "exceeds the limit 1000"}[case]
    assert expected in err, err


def test_predictor_decodes_a_forced_seg(run):
    """With [SEG] generated, the answer carries a mask of the image's size, SAM's IoU and the region mask."""
    p = inference.Predictor.from_run(run, max_new_tokens=3)
    assert next(p.model.parameters()).device.type == p.device.type  # sim4seg.runtime.device(): cuda when present
    tok = p.proc.tokenizer
    image = np.random.default_rng(1).integers(0, 255, (60, 80, 3), np.uint8)
    force = LogitsProcessorList([ForceSeg(p.model.seg_token_id, tok.eos_token_id)])
    pred = p.predict(image, Q, logits_processor=force)
    assert pred.n_seg == 1 and "[SEG]" in pred.answer and pred.flags == []
    assert pred.mask.shape == (60, 80) and pred.seg_masks.shape == (1, 60, 80) and pred.sam_iou is not None
    assert pred.region is not None and pred.region.shape == (60, 80) and pred.region.any()
    assert set(pred.timings) == {"preprocessing", "sam_encoder", "generation", "decoding"}
    assert pred.timings["decoding"] > 0
    # Test-time scaling (deployable selection) on the same path: m x n candidates, one answer.
    force = LogitsProcessorList([ForceSeg(p.model.seg_token_id, tok.eos_token_id)])
    tts = p.predict(image, Q, m=2, n=3, select="sam_score", logits_processor=force)
    assert tts.n_seg == 1 and tts.mask.shape == (60, 80)


def write_batch(folder: Path) -> None:
    (folder / "sub").mkdir(parents=True)
    write_dicom(folder / "ct.dcm", np.full((24, 20), 1064, np.uint16), RescaleSlope=1, RescaleIntercept=-1024)
    nib.save(nib.Nifti1Image(np.random.default_rng(0).random((30, 20, 4)).astype(np.float32), np.eye(4)),
             folder / "sub" / "vol.nii.gz")
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (40, 50, 3), np.uint8)).save(folder / "a.jpg")
    Image.fromarray((np.arange(600).reshape(20, 30) * 100).astype(np.uint16)).save(folder / "sub" / "x16.png")
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    _nifti_one_voxel(folder / "one.nii")


def test_batch_predict_resumes_and_reports_bad_files(run, tmp_path, capsys, monkeypatch):
    imgs, out = tmp_path / "imgs", tmp_path / "out"
    write_batch(imgs)
    args = ["predict", "--ckpt", str(run), "--images", str(imgs), "--query", Q, "--out", str(out),
            "--max-new-tokens", "3"]
    # Interrupt the first run (Ctrl-C) while it works on its third image.
    original, calls = inference.Predictor.predict_file, []

    def interrupted(self, *a, **k):
        calls.append(a[0])
        if len(calls) == 3:
            raise KeyboardInterrupt
        return original(self, *a, **k)

    monkeypatch.setattr(inference.Predictor, "predict_file", interrupted)
    assert main(args) == 130
    assert "interrupted" in capsys.readouterr().err
    assert len((out / "predictions.jsonl").read_text().splitlines()) == 2
    monkeypatch.setattr(inference.Predictor, "predict_file", original)
    with open(out / "predictions.jsonl", "a") as f:  # a line cut by a kill mid-write is redone, not kept
        f.write('{"image": "sub/vol.nii.gz", "answ')
    capsys.readouterr()
    assert main(args) == 1  # bad files make the exit status 1
    cap = capsys.readouterr()
    assert cap.out.strip().splitlines()[-1] == (
        f"predicted 2 image(s) into {out / 'predictions.jsonl'}; 2 already there (skipped); 2 bad file(s) skipped "
        f"(listed in {out / 'errors.jsonl'})")
    assert "broken.png" in cap.err and "single voxel" in cap.err
    rows = [json.loads(x) for x in (out / "predictions.jsonl").read_text().splitlines()]
    assert sorted(r["image"] for r in rows) == ["a.jpg", "ct.dcm", "sub/vol.nii.gz", "sub/x16.png"]
    sizes = {"a.jpg": [40, 50], "ct.dcm": [24, 20], "sub/vol.nii.gz": [20, 30], "sub/x16.png": [20, 30]}
    for r in rows:
        assert {"answer", "diagnosis", "mask", "mask_png", "sam_iou", "flags"} <= set(r)
        assert r["mask"]["size"] == sizes[r["image"]]
        png = np.asarray(Image.open(out / r["mask_png"])) > 0
        rle = {"size": r["mask"]["size"], "counts": r["mask"]["counts"].encode()}
        with warnings.catch_warnings():  # pycocotools' decode trips a NumPy 2 DeprecationWarning (copy=False)
            warnings.simplefilter("ignore", DeprecationWarning)
            assert (coco_mask.decode(rle).astype(bool) == png).all()
    errors = [json.loads(x) for x in (out / "errors.jsonl").read_text().splitlines()]
    assert sorted(e["image"] for e in errors) == ["broken.png", "one.nii"]
    # Everything done: a third run loads no model and only reports.
    monkeypatch.setattr(inference.Predictor, "__init__", lambda *a, **k: pytest.fail("model loaded"))
    assert main(args) == 1
    assert "predicted 0 image(s)" in capsys.readouterr().out


def test_batch_from_csv_with_queries(run, tmp_path, capsys):
    Image.fromarray(np.zeros((30, 30, 3), np.uint8)).save(tmp_path / "one.png")
    Image.fromarray(np.zeros((20, 30, 3), np.uint8)).save(tmp_path / "two.png")
    (tmp_path / "list.csv").write_text("image,query\none.png,Where is the polyp?\ntwo.png,\n")
    out = tmp_path / "out"
    assert main(["predict", "--ckpt", str(run), "--images", str(tmp_path / "list.csv"), "--out", str(out),
                 "--max-new-tokens", "2"]) == 1  # two.png has no question and no --query was given
    rows = [json.loads(x) for x in (out / "predictions.jsonl").read_text().splitlines()]
    assert [(r["image"], r["query"]) for r in rows] == [("one.png", "Where is the polyp?")]
    assert "two.png: the question is empty" in capsys.readouterr().err
