"""FracAtlas (Abedeen et al. 2023): fractured radiographs with COCO polygon masks and official split CSVs.

Layout: ``FracAtlas/images/{Fractured,Non_fractured}/IMG*.jpg``, ``Annotations/COCO JSON/*.json``,
``dataset.csv``, ``Utilities/Fracture Split/{train,valid,test}.csv``. Only the 717 annotated (fractured) images
enter M3DS; the split CSVs list exactly them (574/82/61, Table 1). ``--negatives``: the 3,366 images that
``dataset.csv`` marks ``fractured = 0`` and no annotation outlines, as negatives, with their own seeded split
in those proportions (drawn over all of them, so a partial download keeps the full download's split).
``--per-finding-targets``: one target per COCO annotation of an image with several.
"""

from __future__ import annotations

import json
from pathlib import Path

from sim4seg.data.converters.base import ConversionProblem, ConvertOptions, Finding, Item, Reporter
from sim4seg.data.converters.layout import binary_flag, find_dir, read_csv_rows, require
from sim4seg.data.converters.splits import apply_split, negatives_split
from sim4seg.data.schema import NORMAL
from sim4seg.errors import UserError

SOURCE, SUBSET = "fracatlas", "FracAtlas"
SPLIT_CSVS = {"train": "train", "valid": "val", "test": "test"}
COUNTS = {"train": 574, "val": 82, "test": 61}  # Table 1 (the split CSVs)


def _segmentations(ann: dict, where: str) -> list[list[float]]:
    seg = ann.get("segmentation") or []
    if isinstance(seg, str):  # some FracAtlas exports store the polygon list as a JSON string
        try:
            seg = json.loads(seg)
        except json.JSONDecodeError:
            raise UserError(f"{where}: annotation {ann.get('id')}: segmentation is not valid JSON") from None
    if seg and not isinstance(seg[0], list):
        seg = [seg]  # a single flat polygon
    return [[float(v) for v in p] for p in seg]


def collect(root: Path, opts: ConvertOptions, rep: Reporter) -> tuple[list[Item], int]:
    base = root / "FracAtlas" if (root / "FracAtlas").is_dir() else root
    coco_dir = require(find_dir(base, "COCO JSON"), "Annotations/COCO JSON/", root)
    coco_files = sorted(coco_dir.glob("*.json"))
    if not coco_files:
        raise UserError(f"no COCO JSON file in {coco_dir}")
    split_dir = require(find_dir(base, "Fracture Split"), "Utilities/Fracture Split/", root)
    split_of: dict[str, str] = {}
    for stem, split in SPLIT_CSVS.items():
        csv_path = require(split_dir / f"{stem}.csv", f"Utilities/Fracture Split/{stem}.csv", root)
        for row in read_csv_rows(csv_path)[1:]:
            split_of[row[0]] = split

    images: dict[str, Path] = {}
    img_root = base / "images"
    for p in sorted(img_root.rglob("*")) if img_root.is_dir() else []:
        if p.is_file():
            images.setdefault(p.name, p)

    polys: dict[int, list[list[list[float]]]] = {}  # image id -> polygons of each annotation
    info: dict[int, dict] = {}
    for cf in coco_files:
        d = json.loads(cf.read_text(encoding="utf-8"))
        for im in d.get("images", []):
            info[im["id"]] = im
        for ann in d.get("annotations", []):
            polys.setdefault(ann["image_id"], []).append(_segmentations(ann, str(cf)))

    items, missing, unsplit = [], [], []
    for iid, per_ann in sorted(polys.items()):
        name = info[iid]["file_name"]
        if name not in split_of:
            unsplit.append(name)
            continue
        if name not in images:
            missing.append(name)
            continue
        img = images[name]
        items.append(Item(
            name=Path(name).stem, image=img, split=split_of[name], diagnosis=["fracture"],
            polygons=[p for ann in per_ann for p in ann], findings=[Finding("fracture", polygons=a) for a in per_ann],
            source={"image": img.relative_to(base).as_posix(), "annotations": coco_files[0].name,
                    "coco_image_id": iid, "split_csv": next(k for k, v in SPLIT_CSVS.items()
                                                            if v == split_of[name]) + ".csv"}))
    if unsplit:
        rep.warn(f"{len(unsplit)} annotated image(s) are in no split CSV and are left out, e.g. {unsplit[0]}")
    rep.missing_files(missing, coco_files[0].name, root, len(items))
    if opts.negatives:
        annotated = {info[iid]["file_name"] for iid in polys}
        items += _negatives(base, images, annotated, root, rep, opts.seed)
    return items, 0


def _negatives(base: Path, images: dict[str, Path], annotated: set[str], root: Path, rep: Reporter, seed: int,
               ) -> list[Item]:
    """The images ``dataset.csv`` marks not fractured and no annotation outlines (IMG0003298 is marked 0 but
    annotated: a positive), split by :func:`negatives_split`."""
    csv_path = require(base / "dataset.csv", "dataset.csv", root)
    rows = read_csv_rows(csv_path)
    head = rows[0] if rows else []
    if "image_id" not in head or "fractured" not in head:
        raise UserError(f"{csv_path}: expected the columns image_id and fractured (FracAtlas' dataset.csv)")
    col_id, col_frac = head.index("image_id"), head.index("fractured")
    listed = []
    for n, row in enumerate(rows[1:], 2):
        where = f"{csv_path}:{n}"
        if len(row) <= max(col_id, col_frac):
            rep.problem(f"{where}: {len(row)} cells, fewer than the header's")
            continue
        try:
            if not binary_flag(row[col_frac], where) and row[col_id] not in annotated:
                listed.append(row[col_id])
        except ConversionProblem as e:
            rep.problem(str(e))
    present = [name for name in listed if name in images]
    rep.missing_files([n for n in listed if n not in images], f"{csv_path.name} (not fractured)", root, len(present))
    items = [Item(name=Path(name).stem, image=images[name], diagnosis=[NORMAL], negative=True,
                  source={"image": images[name].relative_to(base).as_posix(), "dataset_csv": "fractured=0"})
             for name in present]
    kept, _ = apply_split(items, negatives_split([Path(n).stem for n in listed], COUNTS, seed, SUBSET))
    return kept
