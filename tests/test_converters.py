"""M3DS converters: real samples in their native layouts (../shared/realdata) and small synthetic layouts."""

from __future__ import annotations

import argparse
import csv
import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image
from pycocotools.coco import COCO

from sim4seg.data import commands
from sim4seg.data.check import check_dataset
from sim4seg.data.converters import (
    CONVERTERS,
    SUBSET_OF,
    ConvertOptions,
    bfd,
    busi,
    chestx_det,
    fives,
    fracatlas,
    isbi,
    kvasir,
    tn3k,
)
from sim4seg.data.converters.masks import boxes_to_mask, polygons_to_mask
from sim4seg.data.converters.splits import LEFT_OUT, negatives_split, seeded_split
from sim4seg.data.vocab import M3DS_SUBSETS
from sim4seg.errors import UserError

REAL = Path(__file__).resolve().parents[1].parent / "shared" / "realdata"

# Table 1 of the paper (train, val, test).
TABLE1 = {"FracAtlas": (574, 82, 61), "BoneFracture": (311, 83, 43), "BFD": (1804, 173, 83),
          "ISBI": (899, 277, 101), "ISIC": (2000, 150, 600), "Kvasir-SEG": (801, 99, 100),
          "BUSI": (532, 55, 60), "TN3K": (2001, 878, 614), "ChestX-Det": (2478, 388, 101), "FIVES": (600, 99, 101)}


def real(name: str) -> Path:
    path = REAL / name
    if not path.exists():
        pytest.skip(f"real sample {path} is absent (see ../shared/realdata/SOURCES.md)")
    return path


def records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines() if line.strip()]


def mask_of(out: Path, rec: dict) -> np.ndarray:
    m = np.asarray(Image.open(out / rec["mask"]))
    assert m.ndim == 2 and set(np.unique(m).tolist()) <= {0, 255}
    return m == 255


def gray_png(path: Path, a: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(a.astype(np.uint8)).save(path)


def blank_jpeg(path: Path, w: int, h: int, value: int = 90) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (w, h), (value, value, value)).save(path, quality=80)


# ---------------------------------------------------------------------------------------------------------------
# registry and CLI


def test_registry_matches_cli_and_vocab() -> None:
    assert set(CONVERTERS) == set(commands.SOURCES)
    assert set(SUBSET_OF.values()) == set(M3DS_SUBSETS)


def test_cli_convert_and_unknown_source(tmp_path: Path, capsys) -> None:
    parser = argparse.ArgumentParser()
    commands.register(parser.add_subparsers())
    args = parser.parse_args(["convert", "--source", "busi", "--root", str(real("busi")), "--out", str(tmp_path)])
    assert args.func(args) == 0
    assert "7 BUSI record(s) written" in capsys.readouterr().out
    args = parser.parse_args(["convert", "--source", "busi", "--root", str(real("busi")), "--out", str(tmp_path / "n"),
                              "--negatives", "--per-finding-targets"])
    assert args.func(args) == 0
    assert "9 BUSI record(s) written (train 8, val 0, test 1); 2 of them negatives (no finding); 1 of them with " \
           "per-finding targets" in capsys.readouterr().out
    args = parser.parse_args(["convert", "--source", "nope", "--root", str(tmp_path), "--out", str(tmp_path)])
    with pytest.raises(UserError, match="unknown --source 'nope'"):
        args.func(args)


def test_convert_that_writes_nothing_fails_and_says_why(tmp_path: Path, capsys) -> None:
    # ChestX-Det's annotation JSONs without the images of train_data.zip/test_data.zip: every sample is missing.
    root = tmp_path / "native"
    root.mkdir()
    for f in ("ChestX_Det_train.json", "ChestX_Det_test.json"):
        shutil.copy(real("chestx_det") / f, root / f)
    parser = argparse.ArgumentParser()
    commands.register(parser.add_subparsers())
    args = parser.parse_args(["convert", "--source", "chestx_det", "--root", str(root), "--out", str(tmp_path / "o")])
    with pytest.raises(UserError, match=r"chestx_det: wrote 0 records .*have no image or mask file under --root"):
        args.func(args)
    assert "0 ChestX-Det record(s) written" in capsys.readouterr().out
    # A rerun over a folder that already holds everything writes nothing too, but that is a resume, not a failure.
    args = parser.parse_args(["convert", "--source", "busi", "--root", str(real("busi")), "--out", str(tmp_path)])
    assert args.func(args) == 0
    assert args.func(args) == 0


def test_bad_root_is_a_user_error(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="is not a folder"):
        CONVERTERS["kvasir"](tmp_path / "absent", tmp_path / "out")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="Dataset_BUSI_with_GT"):
        CONVERTERS["busi"](tmp_path / "empty", tmp_path / "out")


# ---------------------------------------------------------------------------------------------------------------
# real samples


@pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")  # pycocotools on NumPy 2
def test_fracatlas_polygons_and_split_csvs(tmp_path: Path, capsys) -> None:
    root = real("fracatlas")
    summary = CONVERTERS["fracatlas"](root, tmp_path)
    recs = records(tmp_path)
    present = sorted(p.stem for p in (root / "FracAtlas/images/Fractured").glob("*.jpg"))
    assert sorted(r["id"].split("/")[1] for r in recs) == present
    # split = the official split CSVs
    split_of = {}
    for stem, split in (("train", "train"), ("valid", "val"), ("test", "test")):
        with open(root / f"FracAtlas/Utilities/Fracture Split/{stem}.csv") as f:
            split_of.update({row["image_id"]: split for row in csv.DictReader(f)})
    coco = COCO(str(root / "FracAtlas/Annotations/COCO JSON/COCO_fracture_masks.json"))
    by_name = {im["file_name"]: im for im in coco.dataset["images"]}
    for r in recs:
        name = r["id"].split("/")[1] + ".jpg"
        assert r["split"] == split_of[name] and r["diagnosis"] == ["fracture"] and r["subset"] == "FracAtlas"
        # the image is copied byte for byte; the mask is the union of the image's annotations (pycocotools decoding)
        assert (tmp_path / r["image"]).read_bytes() == (root / "FracAtlas/images/Fractured" / name).read_bytes()
        anns = coco.loadAnns(coco.getAnnIds(imgIds=by_name[name]["id"]))
        expected = np.zeros((by_name[name]["height"], by_name[name]["width"]), bool)
        for a in anns:
            expected |= coco.annToMask(a).astype(bool)
        got = mask_of(tmp_path, r)
        assert got.shape == expected.shape and (got == expected).all() and got.any()
    # partial download: one warning line naming the count, no crash
    err = capsys.readouterr().err
    assert summary.missing == 717 - len(recs)
    assert f"{717 - len(recs)} file(s) listed in COCO_fracture_masks.json are missing" in err
    assert check_dataset(tmp_path).ok


@pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")
def test_fracatlas_string_segmentation_and_union(tmp_path: Path) -> None:
    """Segmentations stored as JSON strings parse, and several annotations of one image are unioned."""
    root = real("fracatlas") / "FracAtlas"
    native = tmp_path / "FracAtlas"
    (native / "Annotations/COCO JSON").mkdir(parents=True)
    (native / "Utilities").mkdir()
    shutil.copytree(root / "Utilities/Fracture Split", native / "Utilities/Fracture Split")
    shutil.copytree(root / "images", native / "images")
    d = json.loads((root / "Annotations/COCO JSON/COCO_fracture_masks.json").read_text())
    img = next(im for im in d["images"] if im["file_name"] == "IMG0000019.jpg")
    extra = {"id": 10**6, "iscrowd": 0, "image_id": img["id"], "category_id": 0, "bbox": [100, 200, 300, 80],
             "area": 24000.0, "segmentation": [[100.0, 200.0, 400.0, 200.0, 400.0, 280.0, 100.0, 280.0]]}
    d["annotations"].append(extra)
    (tmp_path / "plain.json").write_text(json.dumps(d))
    for a in d["annotations"]:
        a["segmentation"] = json.dumps(a["segmentation"])
    (native / "Annotations/COCO JSON/COCO_fracture_masks.json").write_text(json.dumps(d))
    CONVERTERS["fracatlas"](tmp_path, tmp_path / "out")
    rec = next(r for r in records(tmp_path / "out") if r["id"] == "FracAtlas/IMG0000019")
    coco = COCO(str(tmp_path / "plain.json"))
    anns = coco.loadAnns(coco.getAnnIds(imgIds=img["id"]))
    assert len(anns) == 2
    expected = coco.annToMask(anns[0]).astype(bool) | coco.annToMask(anns[1]).astype(bool)
    got = mask_of(tmp_path / "out", rec)
    assert (got == expected).all() and got[200:280, 100:400].all()


def test_busi_multi_mask_union_and_normal(tmp_path: Path) -> None:
    root = real("busi") / "Dataset_BUSI_with_GT"
    CONVERTERS["busi"](root.parent, tmp_path / "a")
    recs = {r["id"]: r for r in records(tmp_path / "a")}
    assert set(recs) == {f"BUSI/{c} ({i})" for c, n in (("benign", 4), ("malignant", 3)) for i in range(1, n + 1)}
    for rid, r in recs.items():
        cls, stem = r["diagnosis"][0], rid.split("/")[1]
        assert rid.startswith(f"BUSI/{cls} ") and r["modality"] == "ultrasound"
        expected = None
        for f in sorted((root / cls).glob(f"{stem}_mask*.png")):
            m = np.asarray(Image.open(f).convert("L")) > 0
            expected = m if expected is None else expected | m
        assert (mask_of(tmp_path / "a", r) == expected).all()
    # benign (4) has two mask files, and the second adds pixels the first lacks
    m0 = np.asarray(Image.open(root / "benign/benign (4)_mask.png").convert("L")) > 0
    union = mask_of(tmp_path / "a", recs["BUSI/benign (4)"])
    assert union.sum() > m0.sum()
    # normal: left out by default; with --negatives kept as negatives (no mask file), on their own split
    summary = CONVERTERS["busi"](root.parent, tmp_path / "b", ConvertOptions(negatives=True))
    normal = {r["id"]: r for r in records(tmp_path / "b") if r["diagnosis"] == ["normal"]}
    assert set(normal) == {"BUSI/normal (1)", "BUSI/normal (2)"} and summary.negatives == 2
    assert all(r["mask"] is None and "targets" not in r for r in normal.values())
    assert not (tmp_path / "b/masks/BUSI/normal (1).png").exists()
    own = negatives_split(["normal (1)", "normal (2)"], busi.COUNTS, 0, "BUSI")
    assert {rid: r["split"] for rid, r in normal.items()} == {f"BUSI/{k}": v for k, v in own.items()}
    # the lesion images keep their records (split included) exactly
    assert {r["id"]: r for r in records(tmp_path / "b") if r["mask"]} == recs
    assert check_dataset(tmp_path / "b").ok


def test_busi_per_finding_targets(tmp_path: Path) -> None:
    root = real("busi") / "Dataset_BUSI_with_GT"
    summary = CONVERTERS["busi"](root.parent, tmp_path, ConvertOptions(per_finding_targets=True))
    recs = {r["id"]: r for r in records(tmp_path)}
    assert summary.with_targets == 1 and [k for k, r in recs.items() if "targets" in r] == ["BUSI/benign (4)"]
    rec = recs["BUSI/benign (4)"]
    files = [np.asarray(Image.open(root / f"benign/benign (4){s}.png").convert("L")) > 0 for s in ("_mask", "_mask_1")]
    got = [mask_of(tmp_path, {"mask": t["mask"]}) for t in rec["targets"]]
    assert [t["label"] for t in rec["targets"]] == ["benign", "benign"]
    # one target per mask file, left to right; the record's mask stays their union
    by_x = sorted(files, key=lambda m: np.nonzero(m)[1].mean())
    assert all((g == f).all() for g, f in zip(got, by_x, strict=True))
    assert (mask_of(tmp_path, rec) == (files[0] | files[1])).all()
    assert check_dataset(tmp_path).ok


@pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")
def test_fracatlas_negatives_from_dataset_csv(tmp_path: Path, capsys) -> None:
    root = real("fracatlas")
    CONVERTERS["fracatlas"](root, tmp_path / "paper")
    summary = CONVERTERS["fracatlas"](root, tmp_path / "neg", ConvertOptions(negatives=True))
    recs = {r["id"]: r for r in records(tmp_path / "neg")}
    negatives = {k: r for k, r in recs.items() if r["mask"] is None}
    present = sorted(p.stem for p in (root / "FracAtlas/images/Non_fractured").glob("*.jpg"))
    assert sorted(k.split("/")[1] for k in negatives) == present and summary.negatives == len(present)
    assert all(r["diagnosis"] == ["normal"] for r in negatives.values())
    # the split is drawn over every non-fractured image dataset.csv lists (3,366: IMG0003298 is marked 0 there but
    # annotated, so it stays a positive), whichever are present
    with open(root / "FracAtlas/dataset.csv") as f:
        listed = [row["image_id"][:-4] for row in csv.DictReader(f) if row["fractured"] == "0"]
    assert len(listed) == 3367 and "IMG0003298" in listed
    listed.remove("IMG0003298")
    full = negatives_split(listed, fracatlas.COUNTS, 0, "FracAtlas")
    assert all(r["split"] == full[k.split("/")[1]] for k, r in negatives.items())
    # the positives are exactly the paper-setting records
    assert {k: r for k, r in recs.items() if r["mask"]} == {r["id"]: r for r in records(tmp_path / "paper")}
    assert "3364 file(s) listed in dataset.csv (not fractured) are missing" in capsys.readouterr().err
    assert check_dataset(tmp_path / "neg").ok


def test_kvasir_jpeg_masks_are_thresholded(tmp_path: Path, capsys) -> None:
    root = real("kvasir_seg")
    CONVERTERS["kvasir"](root, tmp_path)
    recs = records(tmp_path)
    assert len(recs) == 3
    for r in recs:
        stem = r["id"].split("/")[1]
        native = np.asarray(Image.open(root / f"Kvasir-SEG/masks/{stem}.jpg").convert("L"))
        assert len(np.unique(native)) > 2  # JPEG noise in the source
        got = np.asarray(Image.open(tmp_path / r["mask"]))
        assert set(np.unique(got).tolist()) == {0, 255}
        assert ((got == 255) == (native >= 128)).all()
        assert r["image"].endswith(".jpg")
        assert (tmp_path / r["image"]).read_bytes() == (root / f"Kvasir-SEG/images/{stem}.jpg").read_bytes()
    assert "2 file(s) listed in kavsir_bboxes.json" in capsys.readouterr().err
    assert check_dataset(tmp_path).ok


def _yolo_boxes(label: Path, w: int, h: int) -> np.ndarray:
    expected = np.zeros((h, w), bool)
    for line in label.read_text().splitlines():
        if line.strip():
            _, cx, cy, bw, bh = map(float, line.split())
            x0, x1 = round((cx - bw / 2) * w), round((cx + bw / 2) * w)
            y0, y1 = round((cy - bh / 2) * h), round((cy + bh / 2) * h)
            expected[max(y0, 0):y1, max(x0, 0):x1] = True
    return expected


def test_roboflow_boxes_are_filled_rectangles(tmp_path: Path) -> None:
    root = real("roboflow_bone_fracture")
    CONVERTERS["bone_fracture"](root, tmp_path)
    recs = records(tmp_path)
    labels = sorted((root / "test/labels").glob("*.txt"))
    with_boxes = {p.stem for p in labels if p.read_text().strip()}
    assert {r["id"] for r in recs} == {f"BoneFracture/test/{s}" for s in with_boxes}
    assert len(with_boxes) < len(labels)  # an image without boxes is left out
    for r in recs:
        stem = r["id"].split("/")[-1]
        w, h = Image.open(root / f"test/images/{stem}.jpg").size
        expected = _yolo_boxes(root / f"test/labels/{stem}.txt", w, h)
        got = mask_of(tmp_path, r)
        assert (got == expected).all() and got.any()
        assert r["split"] == "test" and r["diagnosis"] == ["fracture"]


def test_bfd_polygons_and_class_names(tmp_path: Path) -> None:
    root = real("bone_fracture_darabi")
    CONVERTERS["bfd"](root, tmp_path)
    recs = {r["id"].split("/")[-1]: r for r in records(tmp_path)}
    base = root / "BoneFractureYolo8"
    names = bfd.yolo_class_names(base / "data.yaml")
    non_empty = {p.stem for p in (base / "test/labels").glob("*.txt") if p.read_text().strip()}
    assert set(recs) == non_empty
    # class 5 is "shoulder fracture"; classes 3/4 ("humerus fracture"/"humerus", mis-ordered in data.yaml) both
    # mean humerus fracture
    assert names[5] == "shoulder fracture"
    assert recs["image1_1000_png.rf.a53c5e186c03961bf88075c6e3e94cf6"]["diagnosis"] == ["shoulder fracture"]
    assert recs["image1_1035_png.rf.d7493a5653bc3628f7a1b1ec0eb5de85"]["diagnosis"] == ["humerus fracture"]
    assert recs["image1_1044_png.rf.1e17d3a8637036ef4b3e1c5d0b88011f"]["diagnosis"] == ["wrist fracture"]
    for stem, r in recs.items():
        w, h = Image.open(base / f"test/images/{stem}.jpg").size
        # independent rasterisation with OpenCV: agrees up to the boundary convention
        ref = np.zeros((h, w), np.uint8)
        for line in (base / f"test/labels/{stem}.txt").read_text().splitlines():
            v = np.array(line.split()[1:], float).reshape(-1, 2) * (w, h)
            cv2.fillPoly(ref, [np.round(v - 0.5).astype(np.int32)], 1)
        got = mask_of(tmp_path, r)
        iou = (got & (ref > 0)).sum() / (got | (ref > 0)).sum()
        assert iou > 0.9, (stem, iou)


def _chestx_det_jsons(tmp_path: Path) -> tuple[Path, list[dict], list[dict]]:
    """A ChestX-Det folder holding the real sample's two label files (no images), and their parsed entries."""
    src = real("chestx_det")
    root = tmp_path / "native"
    root.mkdir()
    for f in ("ChestX_Det_train.json", "ChestX_Det_test.json"):
        shutil.copy(src / f, root / f)
    return root, *(json.loads((src / f).read_text()) for f in ("ChestX_Det_train.json", "ChestX_Det_test.json"))


def test_chestx_det_findings_only(tmp_path: Path, capsys) -> None:
    root, train, test = _chestx_det_jsons(tmp_path)
    with_findings = [r for r in train if len(set(r["syms"])) > 1][:3] + [r for r in test if r["syms"]][:2]
    without = [r for r in train if not r["syms"]][:2]
    for r in with_findings + without:  # blank images of the official size (ChestX-Det ships no images here)
        part = "train" if r in train else "test"
        gray_png(root / f"{part}_data/{part}" / r["file_name"], np.full((1024, 1024), 40))
    CONVERTERS["chestx_det"](root, tmp_path / "out")
    recs = {r["id"]: r for r in records(tmp_path / "out")}
    assert set(recs) == {"ChestX-Det/" + Path(r["file_name"]).stem for r in with_findings}
    for r in with_findings:
        rec = recs["ChestX-Det/" + Path(r["file_name"]).stem]
        assert rec["diagnosis"] == sorted({s.lower() for s in r["syms"]}) and len(rec["diagnosis"]) >= 1
        assert rec["split"] == "train" if r in train else rec["split"] in ("val", "test")
        ref = np.zeros((1024, 1024), np.uint8)
        cv2.fillPoly(ref, [np.array(p, np.int32) for p in r["polygons"]], 1)
        got = mask_of(tmp_path / "out", rec)
        assert (got & (ref > 0)).sum() / (got | (ref > 0)).sum() > 0.9
    assert any(len(recs["ChestX-Det/" + Path(r["file_name"]).stem]["diagnosis"]) > 1 for r in with_findings)
    err = capsys.readouterr().err
    assert "listed in ChestX_Det_train.json are missing" in err and "listed in ChestX_Det_test.json" in err
    # the val/test draw is over the JSON's 489 test images with findings, whichever images are present
    listed = [Path(r["file_name"]).stem for r in test if r["syms"]]
    assert len(listed) == 489
    full = seeded_split(listed, chestx_det.TEST_COUNTS, 0, salt="ChestX-Det")
    for r in with_findings[3:]:
        assert recs["ChestX-Det/" + Path(r["file_name"]).stem]["split"] == full[Path(r["file_name"]).stem]


def test_chestx_det_negatives_and_per_finding_targets(tmp_path: Path) -> None:
    root, train, test = _chestx_det_jsons(tmp_path)
    several = next(r for r in train if len(set(r["syms"])) > 2)
    neg_train, neg_test = [r for r in train if not r["syms"]][:2], [r for r in test if not r["syms"]][:2]
    for i, r in enumerate([several, *neg_train, *neg_test]):  # blank images, each its own grey
        part = "train" if r in train else "test"
        gray_png(root / f"{part}_data/{part}" / r["file_name"], np.full((1024, 1024), 40 + i))
    CONVERTERS["chestx_det"](root, tmp_path / "paper")
    summary = CONVERTERS["chestx_det"](root, tmp_path / "out", ConvertOptions(negatives=True, per_finding_targets=True))
    recs = {r["id"].split("/")[1]: r for r in records(tmp_path / "out")}
    assert summary.negatives == 4 and summary.with_targets == 1
    for r in neg_train + neg_test:
        rec = recs[Path(r["file_name"]).stem]
        assert rec["mask"] is None and rec["diagnosis"] == ["normal"]
    assert all(recs[Path(r["file_name"]).stem]["split"] == "train" for r in neg_train)
    listed = [Path(r["file_name"]).stem for r in test if not r["syms"]]
    assert len(listed) == 64  # ChestX-Det's test "No Finding" images; their val/test draw is over all of them
    own = negatives_split(listed, chestx_det.TEST_COUNTS, 0, "ChestX-Det")
    assert all(recs[Path(r["file_name"]).stem]["split"] == own[Path(r["file_name"]).stem] for r in neg_test)
    # one target per (sym, polygon), left to right by centroid; their union is the record's mask
    rec = recs[Path(several["file_name"]).stem]
    polys = [np.array(p, float) for p in several["polygons"]]
    order = sorted(range(len(polys)), key=lambda i: (polygons_to_mask([polys[i].ravel().tolist()], (1024, 1024))
                                                     .nonzero()[1].mean()))
    assert [t["label"] for t in rec["targets"]] == [several["syms"][i].lower() for i in order]
    union = np.logical_or.reduce([mask_of(tmp_path / "out", {"mask": t["mask"]}) for t in rec["targets"]])
    assert (union == mask_of(tmp_path / "out", rec)).all()
    paper = records(tmp_path / "paper")
    assert [r["id"] for r in paper] == [rec["id"]] and {k: v for k, v in rec.items() if k != "targets"} == paper[0]
    assert check_dataset(tmp_path / "out").ok


@pytest.mark.parametrize("source,folder,data", [("bone_fracture", "roboflow_bone_fracture", "."),
                                                 ("bfd", "bone_fracture_darabi", "BoneFractureYolo8")])
def test_yolo_negatives_are_images_without_shapes(tmp_path: Path, source: str, folder: str, data: str) -> None:
    base = tmp_path / "native"
    shutil.copytree(real(folder), base)
    base = base / data
    empty = sorted(p.stem for p in (base / "test/labels").glob("*.txt") if not p.read_text().strip())
    # An image without any label file is a background image too (Ultralytics' convention).
    shutil.copy(next((base / "test/images").glob(f"{empty[0]}.*")), base / "test/images/unlabelled.jpg")
    CONVERTERS[source](base, tmp_path / "paper")
    summary = CONVERTERS[source](base, tmp_path / "out", ConvertOptions(negatives=True, per_finding_targets=True))
    recs = {r["id"].split("/")[-1]: r for r in records(tmp_path / "out")}
    negatives = sorted(k for k, r in recs.items() if r["mask"] is None)
    assert negatives == sorted([*empty, "unlabelled"]) and summary.negatives == len(negatives)
    assert all(recs[k]["split"] == "test" and recs[k]["diagnosis"] == ["normal"] for k in negatives)
    with_targets = [r for r in recs.values() if "targets" in r]
    assert len(with_targets) == summary.with_targets > 0
    for r in with_targets:
        lines = (base / r["source"]["label"]).read_text().split("\n")
        assert len(r["targets"]) == len([x for x in lines if x.strip()])
    assert {r["id"]: {k: v for k, v in r.items() if k != "targets"} for r in recs.values() if r["mask"]} == \
        {r["id"]: r for r in records(tmp_path / "paper")}
    assert check_dataset(tmp_path / "out").ok


def test_negative_options_warn_where_there_is_nothing(tmp_path: Path, capsys) -> None:
    CONVERTERS["kvasir"](real("kvasir_seg"), tmp_path, ConvertOptions(negatives=True, per_finding_targets=True))
    err = capsys.readouterr().err
    assert "--negatives: no image without a finding" in err and "--per-finding-targets: no image with several" in err


def test_isic2017_layout_with_real_masks(tmp_path: Path) -> None:
    masks = sorted((real("isic") / "ISIC2018_Task1_Training_GroundTruth").glob("*.png"))
    root = tmp_path / "native"
    parts = {"Training": masks[:3], "Validation": masks[3:4], "Test_v2": masks[4:]}
    flags = [("1.0", "0.0"), ("0.0", "1.0"), ("0.0", "0.0"), ("0", "0"), ("1", "0")]
    expected_label = ["melanoma", "seborrheic keratosis", "nevus", "nevus", "melanoma"]
    k = 0
    expect = {}
    for part, ms in parts.items():
        rows = ["image_id,melanoma,seborrheic_keratosis"]
        for m in ms:
            iid = m.name.replace("_segmentation.png", "")
            w, h = Image.open(m).size
            blank_jpeg(root / f"ISIC-2017_{part}_Data/{iid}.jpg", w, h)
            gray_png(root / f"ISIC-2017_{part}_Data/{iid}_superpixels.png", np.zeros((4, 4)))
            (root / f"ISIC-2017_{part}_Part1_GroundTruth").mkdir(parents=True, exist_ok=True)
            shutil.copy(m, root / f"ISIC-2017_{part}_Part1_GroundTruth/{m.name}")
            rows.append(f"{iid},{flags[k][0]},{flags[k][1]}")
            expect[iid] = (expected_label[k], {"Training": "train", "Validation": "val", "Test_v2": "test"}[part], m)
            k += 1
        (root / f"ISIC-2017_{part}_Part3_GroundTruth.csv").write_text("\n".join(rows) + "\n")
    CONVERTERS["isic"](root, tmp_path / "out")
    recs = records(tmp_path / "out")
    assert len(recs) == 5
    for r in recs:
        label, split, m = expect[r["id"].split("/")[1]]
        assert r["diagnosis"] == [label] and r["split"] == split
        assert (mask_of(tmp_path / "out", r) == (np.asarray(Image.open(m)) == 255)).all()


def test_isbi2016_layout_with_real_labels(tmp_path: Path, capsys) -> None:
    src = real("isic") / "ISBI2016_ISIC_Part3_Training_GroundTruth.csv"
    root = tmp_path / "native"
    root.mkdir()
    shutil.copy(src, root / src.name)
    with open(src) as f:
        train_labels = {row["img_id"]: row["Label"] for row in csv.DictReader(f)}
    assert len(train_labels) == 900
    kept = seeded_split(train_labels, isbi.SPLITS["train"][0], 0, total=900, salt="ISBI/train")
    chosen = [i for i in sorted(train_labels) if kept[i] == "train"]
    chosen = ([next(i for i in chosen if train_labels[i] == "malignant")]
              + [i for i in chosen if train_labels[i] == "benign"][:3])
    rng = np.random.default_rng(0)
    for iid in chosen:
        blank_jpeg(root / f"ISBI2016_ISIC_Part1_Training_Data/{iid}.jpg", 64, 48)
        gray_png(root / f"ISBI2016_ISIC_Part1_Training_GroundTruth/{iid}_Segmentation.png",
                 (rng.random((48, 64)) > 0.5) * 255)
    # the official test CSV has no header and 0.0/1.0 labels
    (root / "ISBI2016_ISIC_Part3_Test_GroundTruth.csv").write_text("ISIC_9000001,0.0\nISIC_9000002,1.0\n")
    for iid in ("ISIC_9000001", "ISIC_9000002"):
        blank_jpeg(root / f"ISBI2016_ISIC_Part1_Test_Data/{iid}.jpg", 32, 32)
        gray_png(root / f"ISBI2016_ISIC_Part1_Test_GroundTruth/{iid}_Segmentation.png", np.full((32, 32), 255))
    CONVERTERS["isbi"](root, tmp_path / "out")
    recs = {r["id"].split("/")[1]: r for r in records(tmp_path / "out")}
    assert set(recs) == set(chosen) | {"ISIC_9000001", "ISIC_9000002"}
    for iid in chosen:
        assert recs[iid]["diagnosis"] == [train_labels[iid]] and recs[iid]["split"] == "train"
    assert recs["ISIC_9000001"]["diagnosis"] == ["benign"] and recs["ISIC_9000002"]["diagnosis"] == ["malignant"]
    assert {recs[i]["split"] for i in ("ISIC_9000001", "ISIC_9000002")} <= {"val", "test"}
    assert "896 file(s) listed in ISBI2016_ISIC_Part3_Training_GroundTruth.csv are missing" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------------------------
# synthetic native layouts (no real sample exists)


def test_tn3k_synthetic(tmp_path: Path) -> None:
    root = tmp_path / "native"
    rng = np.random.default_rng(1)
    for part, n in (("trainval", 6), ("test", 3)):
        lines = []
        for i in range(n):
            name = f"{i:04d}.jpg"
            blank_jpeg(root / f"{part}-image/{name}", 40, 30)
            m = np.zeros((30, 40), np.uint8)
            m[5:20, 8:30] = 255
            m = np.clip(m.astype(int) + rng.integers(-20, 20, m.shape), 0, 255)  # JPEG-like noise
            Image.fromarray(m.astype(np.uint8)).save(_mkdir(root / f"{part}-mask") / name, quality=90)
            lines.append(f"{name},{i % 2}")
        (root / f"label4{part}.csv").write_text("\n".join(lines) + "\n")
    CONVERTERS["tn3k"](root, tmp_path / "out")
    recs = {r["id"]: r for r in records(tmp_path / "out")}
    assert len(recs) == 9
    assert recs["TN3K/trainval/0001"]["diagnosis"] == ["malignant"]
    assert recs["TN3K/test/0002"]["diagnosis"] == ["benign"] and recs["TN3K/test/0002"]["split"] == "test"
    assert {r["split"] for k, r in recs.items() if "/trainval/" in k} <= {"train", "val"}
    m = mask_of(tmp_path / "out", recs["TN3K/test/0000"])
    assert m[6:19, 9:29].all() and not m[:4].any()


def _mkdir(p: Path) -> Path:
    p.mkdir(parents=True, exist_ok=True)
    return p


def test_fives_synthetic(tmp_path: Path) -> None:
    root = tmp_path / "FIVES A Fundus Image Dataset for AI-based Vessel Segmentation"
    for part, names in (("train", ["1_A", "2_D", "3_G", "4_N"]), ("test", ["1_A", "2_N", "3_G"])):
        for n in names:
            gray_png(root / f"{part}/Original/{n}.png", np.full((32, 32), 100))
            m = np.zeros((32, 32, 3), np.uint8)  # FIVES ground truth may be 3-channel
            m[10:12, :] = 255
            Image.fromarray(m).save(_mkdir(root / f"{part}/Ground truth") / f"{n}.png")
    gray_png(root / "train/Original/bad_name.png", np.zeros((8, 8)))
    CONVERTERS["fives"](tmp_path, tmp_path / "out")  # the archive's top folder is found below --root
    recs = {r["id"]: r for r in records(tmp_path / "out")}
    assert len(recs) == 7
    assert recs["FIVES/train/1_A"]["diagnosis"] == ["age-related macular degeneration"]
    assert recs["FIVES/train/2_D"]["diagnosis"] == ["diabetic retinopathy"]
    assert recs["FIVES/test/3_G"]["diagnosis"] == ["glaucoma"] and recs["FIVES/test/2_N"]["diagnosis"] == ["normal"]
    assert {r["split"] for k, r in recs.items() if "/test/" in k} <= {"val", "test"}
    assert mask_of(tmp_path / "out", recs["FIVES/train/4_N"])[10:12].all()


# ---------------------------------------------------------------------------------------------------------------
# resume, warnings and --strict


def test_rerun_does_not_duplicate_and_resumes(tmp_path: Path) -> None:
    root = real("busi")
    first = CONVERTERS["busi"](root, tmp_path)
    lines = (tmp_path / "records.jsonl").read_text().splitlines()
    again = CONVERTERS["busi"](root, tmp_path)
    assert again.n_written == 0 and again.already_present == first.n_written == len(lines)
    assert (tmp_path / "records.jsonl").read_text().splitlines() == lines
    # a run that crashed after 4 records: the rerun adds exactly the 3 missing ones, with the same content
    (tmp_path / "records.jsonl").write_text("\n".join(lines[:4]) + "\n")
    resumed = CONVERTERS["busi"](root, tmp_path)
    assert resumed.n_written == 3 and resumed.already_present == 4
    assert sorted((tmp_path / "records.jsonl").read_text().splitlines()) == sorted(lines)
    # another source appends to the same folder
    CONVERTERS["kvasir"](real("kvasir_seg"), tmp_path)
    assert len(records(tmp_path)) == len(lines) + 3


@pytest.fixture
def damaged_busi(tmp_path: Path) -> Path:
    root = tmp_path / "Dataset_BUSI_with_GT"
    shutil.copytree(real("busi") / "Dataset_BUSI_with_GT", root)
    # wrong-size mask, PNG mask with noise values, truncated image
    Image.new("L", (10, 10)).save(root / "benign/benign (2)_mask.png")
    noisy = np.asarray(Image.open(root / "malignant/malignant (1)_mask.png").convert("L")).copy()
    noisy[0, :5] = [3, 7, 128, 250, 1]
    Image.fromarray(noisy).save(root / "malignant/malignant (1)_mask.png")
    data = (root / "benign/benign (3).png").read_bytes()
    (root / "benign/benign (3).png").write_bytes(data[: len(data) // 2])
    return tmp_path


def test_damaged_files_warn_and_are_counted(damaged_busi: Path, tmp_path: Path, capsys) -> None:
    summary = CONVERTERS["busi"](damaged_busi, tmp_path / "out")
    assert summary.problems == 3 and summary.n_written == 4
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning")]
    assert len(err) == 3
    assert any("benign (2)_mask.png: mask is 10x10 but its image is 473x557" in e for e in err)
    assert any("malignant (1)_mask.png" in e and "values" in e for e in err)
    assert any("benign (3).png" in e and ("truncated" in e or "readable" in e) for e in err)
    assert "3 skipped with problems" in summary.line()
    assert check_dataset(tmp_path / "out").ok


def test_strict_stops_at_first_problem(damaged_busi: Path, tmp_path: Path) -> None:
    with pytest.raises(UserError) as e:
        CONVERTERS["busi"](damaged_busi, tmp_path / "out", ConvertOptions(strict=True))
    msg = str(e.value)
    assert "\n" not in msg and "--strict" in msg and "benign (2)" in msg
    # what was converted before the stop is kept (and a rerun resumes from there)
    assert [r["id"] for r in records(tmp_path / "out")] == ["BUSI/benign (1)"]


# ---------------------------------------------------------------------------------------------------------------
# splits and rasterisation


def test_seeded_split_gives_exact_table1_counts() -> None:
    ids = [f"k{i:04d}" for i in range(1000)]
    a = seeded_split(ids, kvasir.COUNTS, seed=0, total=1000, salt="Kvasir-SEG")
    counts = [sum(v == s for v in a.values()) for s in ("train", "val", "test")]
    assert tuple(counts) == TABLE1["Kvasir-SEG"]
    assert seeded_split(list(reversed(ids)), kvasir.COUNTS, 0, total=1000, salt="Kvasir-SEG") == a  # order-free
    assert seeded_split(ids, kvasir.COUNTS, 1, total=1000, salt="Kvasir-SEG") != a  # the seed matters
    # a partial list is split in proportion and completely
    half = seeded_split(ids[:500], kvasir.COUNTS, 0, total=1000)
    assert [sum(v == s for v in half.values()) for s in ("train", "val", "test")] == [401, 49, 50]  # 400.5/49.5/50


@pytest.mark.parametrize("subset,parts", [
    ("BUSI", [(busi.COUNTS, busi.TOTAL)]),
    ("TN3K", [(tn3k.TRAINVAL, 2879), ({"test": 614}, 614)]),
    ("ISBI", [isbi.SPLITS["train"], isbi.SPLITS["test"]]),
    ("ChestX-Det", [({"train": 2478}, 2478), (chestx_det.TEST_COUNTS, 489)]),
    ("FIVES", [({"train": 600}, 600), (fives.TEST_COUNTS, 200)]),
])
def test_each_seeded_source_meets_table1(subset: str, parts: list) -> None:
    totals = {"train": 0, "val": 0, "test": 0}
    left = 0
    for counts, n in parts:
        for v in seeded_split([f"x{i}" for i in range(n)], counts, 0, total=n).values():
            if v == LEFT_OUT:
                left += 1
            else:
                totals[v] += 1
    assert tuple(totals.values()) == TABLE1[subset]
    assert left == (2 if subset == "ISBI" else 0)


def test_polygons_and_boxes_are_clipped() -> None:
    m = polygons_to_mask([[-10, -10, 5, -10, 5, 5, -10, 5], [0, 0, 1]], (8, 8))  # 2nd polygon degenerate
    assert m[:5, :5].all() and m.sum() == 25
    b = boxes_to_mask([(-3.2, 6.4, 2.6, 50.0)], (10, 10))
    assert b[6:, :3].all() and b.sum() == 12
