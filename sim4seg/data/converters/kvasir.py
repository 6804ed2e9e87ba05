"""Kvasir-SEG (Jha et al. 2020): 1000 colonoscopy images with polyp masks, no official split.

Layout: ``Kvasir-SEG/images/*.jpg``, ``Kvasir-SEG/masks/*.jpg`` (same names; JPEG masks are thresholded at 128),
optionally ``kavsir_bboxes.json`` (the official file, with its typo), which lists all 1000 ids: when present the
seeded split is drawn over that list, so a partial download gives each image its full-download split.
Split: seeded 801/99/100 (Table 1) of the 1000 images.
"""

from __future__ import annotations

import json
from pathlib import Path

from sim4seg.data.converters.base import ConvertOptions, Item, Reporter
from sim4seg.data.converters.layout import find_dir, list_images, require
from sim4seg.data.converters.splits import apply_split, seeded_split

SOURCE, SUBSET = "kvasir", "Kvasir-SEG"
COUNTS = {"train": 801, "val": 99, "test": 100}


def collect(root: Path, opts: ConvertOptions, rep: Reporter) -> tuple[list[Item], int]:
    base = root if (root / "images").is_dir() else require(find_dir(root, "Kvasir-SEG"), "Kvasir-SEG/", root)
    images, masks = list_images(base / "images"), list_images(base / "masks")
    listed: list[str] = []
    index = base / "kavsir_bboxes.json"
    if index.exists():
        listed = list(json.loads(index.read_text(encoding="utf-8")))
    items, missing = [], []
    for stem in sorted(set(listed) | set(images)):
        if stem not in images or stem not in masks:
            missing.append(f"{stem} ({'image' if stem not in images else 'mask'})")
            continue
        items.append(Item(name=stem, image=images[stem], diagnosis=["polyp"], mask_files=[masks[stem]],
                          source={"image": f"images/{images[stem].name}", "mask": f"masks/{masks[stem].name}"}))
    rep.missing_files(missing, "kavsir_bboxes.json / images/", root, len(items))
    universe = set(listed) | set(images)
    return apply_split(items, seeded_split(universe, COUNTS, opts.seed, total=1000, salt=SUBSET))
