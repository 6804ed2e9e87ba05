"""ChestX-Det (Lian et al. 2021): 3578 NIH chest X-rays, polygons of 13 abnormality classes.

Layout: ``ChestX_Det_train.json`` and ``ChestX_Det_test.json`` (records with ``file_name``, ``syms``, ``boxes``,
``polygons``) and the image folders from ``train_data.zip`` / ``test_data.zip`` (found anywhere under the root by
file name). Diagnosis: the image's ``syms`` lower-cased, unique and sorted; the mask is the union of all its
polygons. Images without findings are left out. Split: the 2478 train images with findings are train (Table 1);
the 489 official test images with findings are split by a seeded draw into val 388 / test 101, drawn over the
JSON's list so a partial image download keeps the full download's split. ``--negatives``: the "No Finding"
images (empty ``syms``: 547 train, 64 test) too, as negatives; the train ones are train, the test ones get their
own seeded val/test draw in the same proportions. ``--per-finding-targets``: one target per (sym, polygon).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from sim4seg.data.converters.base import ConvertOptions, Finding, Item, Reporter
from sim4seg.data.converters.layout import IMAGE_EXTS, find_file, normalise_label
from sim4seg.data.converters.splits import apply_split, negatives_split, seeded_split
from sim4seg.data.schema import NORMAL
from sim4seg.data.vocab import M3DS_SUBSETS
from sim4seg.errors import UserError

SOURCE, SUBSET = "chestx_det", "ChestX-Det"
TEST_COUNTS = {"val": 388, "test": 101}


def _image_index(root: Path) -> dict[str, Path]:
    index: dict[str, Path] = {}
    for dirpath, _, files in os.walk(root):
        for f in sorted(files):
            if Path(f).suffix.lower() in IMAGE_EXTS:
                index.setdefault(f, Path(dirpath) / f)
    return index


def collect(root: Path, opts: ConvertOptions, rep: Reporter) -> tuple[list[Item], int]:
    subset = M3DS_SUBSETS[SUBSET]
    images = _image_index(root)
    items: list[Item] = []
    found_any = False
    for part in ("train", "test"):
        ann = find_file(root, f"ChestX_Det_{part}.json")
        if ann is None:
            rep.warn(f"ChestX_Det_{part}.json not found under {root}: the {part} part is skipped")
            continue
        found_any = True
        part_items, missing, listed, listed_neg = [], [], [], []
        for rec in json.loads(ann.read_text(encoding="utf-8")):
            name = rec["file_name"]
            negative = not rec.get("syms")
            if negative and not opts.negatives:
                continue  # no finding, nothing to segment
            (listed_neg if negative else listed).append(Path(name).stem)
            labels = [normalise_label(subset, s) for s in rec.get("syms") or []]
            if None in labels:
                rep.problem(f"{ann.name}: {name}: unknown finding(s) {rec['syms']}")
                continue
            if name not in images:
                missing.append(name)
                continue
            polys = [[float(v) for pt in poly for v in pt] for poly in rec.get("polygons") or []]
            part_items.append(Item(
                name=Path(name).stem, image=images[name], diagnosis=sorted(set(labels)) or [NORMAL], polygons=polys,
                negative=negative, findings=[Finding(lbl, polygons=[p]) for lbl, p in zip(labels, polys, strict=False)],
                source={"image": images[name].relative_to(root).as_posix(), "annotations": ann.name,
                        "syms": rec.get("syms") or []}))
        rep.missing_files(missing, ann.name, root, len(part_items))
        if part == "train":
            for it in part_items:
                it.split = "train"
        else:
            assignment = seeded_split(listed, TEST_COUNTS, opts.seed, salt=SUBSET)
            assignment.update(negatives_split(listed_neg, TEST_COUNTS, opts.seed, SUBSET))
            part_items, _ = apply_split(part_items, assignment)
        items += part_items
    if not found_any:
        raise UserError(f"neither ChestX_Det_train.json nor ChestX_Det_test.json found under {root}")
    return items, 0
