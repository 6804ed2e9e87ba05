"""BUSI (Al-Dhabyani et al. 2020): breast ultrasound, 437 benign / 210 malignant / 133 normal.

Layout: ``Dataset_BUSI_with_GT/{benign,malignant,normal}/<name>.png`` with ``<name>_mask.png`` and, for images
with several lesions, ``<name>_mask_1.png`` ...; the mask is the union of all of them (mask files may be 1-bit,
grayscale, RGB or RGBA). Diagnosis = folder name. Split: seeded 532/55/60 of the 647 benign+malignant images
(Table 1). ``--negatives``: the 133 normal images too, as negatives (no mask; their all-empty mask files are not
read), with their own seeded split in the same proportions, so the others keep theirs.
``--per-finding-targets``: an image with several mask files gets one target per file.
"""

from __future__ import annotations

import re
from pathlib import Path

from sim4seg.data.converters.base import ConvertOptions, Finding, Item, Reporter
from sim4seg.data.converters.layout import IMAGE_EXTS, find_dir, require
from sim4seg.data.converters.splits import apply_split, negatives_split, seeded_split
from sim4seg.data.schema import NORMAL

SOURCE, SUBSET = "busi", "BUSI"
COUNTS = {"train": 532, "val": 55, "test": 60}
TOTAL = 647  # benign + malignant
MASK_RE = re.compile(r"^(?P<image>.*)_mask(?:_\d+)?$")


def collect(root: Path, opts: ConvertOptions, rep: Reporter) -> tuple[list[Item], int]:
    base = root if (root / "benign").is_dir() else require(
        find_dir(root, "Dataset_BUSI_with_GT"), "Dataset_BUSI_with_GT/", root)
    classes = ("benign", "malignant", NORMAL) if opts.negatives else ("benign", "malignant")
    items: list[Item] = []
    missing = []
    for cls in classes:
        folder = base / cls
        if not folder.is_dir():
            rep.warn(f"class folder {folder} not found (partial download?)")
            continue
        images: dict[str, Path] = {}
        masks: dict[str, list[Path]] = {}
        for p in sorted(folder.iterdir()):
            if not p.is_file() or p.suffix.lower() not in IMAGE_EXTS:
                continue
            m = MASK_RE.match(p.stem)
            if m:
                masks.setdefault(m["image"], []).append(p)
            else:
                images[p.stem] = p
        for stem, img in images.items():
            files = masks.get(stem, [])
            source = {"image": f"{cls}/{img.name}", "masks": [f"{cls}/{m.name}" for m in files]}
            if cls == NORMAL:
                items.append(Item(name=stem, image=img, diagnosis=[NORMAL], source=source, negative=True))
            elif not files:
                missing.append(f"{cls}/{stem}_mask.png")
            else:
                items.append(Item(name=stem, image=img, diagnosis=[cls], mask_files=files, source=source,
                                  findings=[Finding(cls, mask_files=[m]) for m in files]))
    rep.missing_files(missing, "the class folders (an image without its mask)", root, len(items))
    assignment = seeded_split([it.name for it in items if not it.negative], COUNTS, opts.seed, total=TOTAL,
                              salt=SUBSET)
    assignment.update(negatives_split([it.name for it in items if it.negative], COUNTS, opts.seed, SUBSET))
    return apply_split(items, assignment)
