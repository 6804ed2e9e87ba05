"""FIVES (Jin et al. 2022): 800 fundus photographs with vessel masks; the disease is in the file name.

Layout: ``[FIVES A Fundus Image Dataset for AI-based Vessel Segmentation/]{train,test}/{Original,Ground truth}/
<n>_<A|D|G|N>.png`` (A = AMD, D = diabetic retinopathy, G = glaucoma, N = normal). Numbers repeat between train
and test, so ids carry the part: ``FIVES/train/1_A``. Split: the official 600 train images are train; the 200
official test images are split by a seeded draw into val 99 / test 101 (Table 1).
"""

from __future__ import annotations

import re
from pathlib import Path

from sim4seg.data.converters.base import ConvertOptions, Item, Reporter
from sim4seg.data.converters.layout import find_dir, list_images, normalise_label
from sim4seg.data.converters.splits import apply_split, seeded_split
from sim4seg.data.vocab import M3DS_SUBSETS
from sim4seg.errors import UserError

SOURCE, SUBSET = "fives", "FIVES"
NAME_RE = re.compile(r"^\d+_(?P<code>[ADGN])$", re.IGNORECASE)
CODES = {"A": "amd", "D": "dr", "G": "glaucoma", "N": "normal"}  # resolved through the FIVES synonyms
TEST_COUNTS = {"val": 99, "test": 101}


def collect(root: Path, opts: ConvertOptions, rep: Reporter) -> tuple[list[Item], int]:
    subset = M3DS_SUBSETS[SUBSET]
    items: list[Item] = []
    for part in ("train", "test"):
        part_dir = root if root.name.lower() == part else find_dir(root, part, depth=1)
        img_dir = find_dir(part_dir, "Original", depth=0) if part_dir else None
        gt_dir = find_dir(part_dir, "Ground truth", "Ground_truth", "GroundTruth", depth=0) if part_dir else None
        if img_dir is None:
            rep.warn(f"no {part}/Original/ under {root}: the {part} part is skipped")
            continue
        images, masks = list_images(img_dir), list_images(gt_dir)
        part_items, missing = [], []
        for stem, img in images.items():
            m = NAME_RE.match(stem)
            if not m:
                rep.problem(f"{img}: file name is not <number>_<A|D|G|N>, so the diagnosis is unknown")
                continue
            if stem not in masks:
                missing.append(f"{part}/Ground truth/{stem}.png")
                continue
            part_items.append(Item(
                name=f"{part}/{stem}", image=img, diagnosis=[normalise_label(subset, CODES[m["code"].upper()])],
                mask_files=[masks[stem]],
                source={"image": f"{part}/{img_dir.name}/{img.name}", "mask": f"{part}/{gt_dir.name}/{masks[stem].name}"}))
        rep.missing_files(missing, f"{part}/{img_dir.name}", root, len(part_items))
        if part == "train":
            for it in part_items:
                it.split = "train"
        else:
            part_items, _ = apply_split(part_items, seeded_split([it.name for it in part_items], TEST_COUNTS,
                                                                 opts.seed, total=200, salt=SUBSET))
        items += part_items
    if not items and not rep.missing:
        raise UserError(f"no FIVES train/Original/ or test/Original/ images under {root}")
    return items, 0
