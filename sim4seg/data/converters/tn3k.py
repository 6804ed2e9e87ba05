"""TN3K (Gong et al. 2023): thyroid nodule ultrasound, masks, benign/malignant labels.

Layout: ``trainval-image/``, ``trainval-mask/``, ``test-image/``, ``test-mask/`` (``0000.jpg`` ...; JPEG masks
are thresholded at 128), ``label4trainval.csv`` and ``label4test.csv`` (``name,label`` with 0 = benign,
1 = malignant; no header, but one is accepted). Image names repeat between the two parts, so ids carry the part:
``TN3K/trainval/0000``. Split: test = the official 614 test images; the 2879 trainval images are split by a seeded
draw into 2001 train / 878 val (Table 1), drawn over the ids of ``label4trainval.csv``.
"""

from __future__ import annotations

from pathlib import Path

from sim4seg.data.converters.base import ConversionProblem, ConvertOptions, Item, Reporter
from sim4seg.data.converters.layout import binary_flag, find_dir, find_file, list_images, normalise_label, read_csv_rows
from sim4seg.data.converters.splits import apply_split, seeded_split
from sim4seg.data.vocab import M3DS_SUBSETS
from sim4seg.errors import UserError

SOURCE, SUBSET = "tn3k", "TN3K"
TRAINVAL = {"train": 2001, "val": 878}


def _labels(csv_path: Path, rep: Reporter) -> dict[str, str]:
    """``{image stem: label}``; a first row whose label cell is not a label is taken as a header."""
    out = {}
    for i, row in enumerate(read_csv_rows(csv_path)):
        if len(row) < 2:
            rep.problem(f"{csv_path}:{i + 1}: expected 'name,label'")
            continue
        name, value = row[0], row[-1]
        label = normalise_label(M3DS_SUBSETS[SUBSET], value)
        if label is None:
            try:
                label = "malignant" if binary_flag(value, f"{csv_path}:{i + 1}") else "benign"
            except ConversionProblem as e:
                if i == 0:
                    continue  # header
                rep.problem(str(e))
                continue
        out[Path(name).stem] = label
    return out


def collect(root: Path, opts: ConvertOptions, rep: Reporter) -> tuple[list[Item], int]:
    items: list[Item] = []
    found_any = False
    for part in ("trainval", "test"):
        img_dir, mask_dir = find_dir(root, f"{part}-image"), find_dir(root, f"{part}-mask")
        csv_path = find_file(root, f"label4{part}.csv")
        if img_dir is None and csv_path is None:
            rep.warn(f"no {part}-image/ or label4{part}.csv under {root}: the {part} part is skipped")
            continue
        found_any = True
        if csv_path is None:
            raise UserError(f"label4{part}.csv not found under {root}; TN3K diagnoses come from it")
        labels = _labels(csv_path, rep)
        images, masks = list_images(img_dir), list_images(mask_dir)
        part_items, missing = [], []
        for stem, label in labels.items():
            if stem not in images or stem not in masks:
                missing.append(f"{part}/{stem} ({'image' if stem not in images else 'mask'})")
                continue
            part_items.append(Item(
                name=f"{part}/{stem}", image=images[stem], diagnosis=[label], mask_files=[masks[stem]],
                source={"image": f"{part}-image/{images[stem].name}", "mask": f"{part}-mask/{masks[stem].name}",
                        "labels": csv_path.name}))
        rep.missing_files(missing, csv_path.name, root, len(part_items))
        if part == "test":
            for it in part_items:
                it.split = "test"
        else:
            assignment = seeded_split([f"{part}/{s}" for s in labels], TRAINVAL, opts.seed, total=2879, salt=SUBSET)
            part_items, _ = apply_split(part_items, assignment)
        items += part_items
    if not found_any:
        raise UserError(f"no TN3K trainval-image/ or test-image/ with label4*.csv under {root}")
    return items, 0
