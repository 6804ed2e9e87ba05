"""ISBI 2016 (ISIC 2016 challenge, Gutman et al.): dermoscopy, lesion masks, benign/malignant (Part 3).

Layout: ``ISBI2016_ISIC_Part1_{Training,Test}_Data/ISIC_*.jpg``, ``ISBI2016_ISIC_Part1_{Training,Test}_GroundTruth/
ISIC_*_Segmentation.png``, ``ISBI2016_ISIC_Part3_{Training,Test}_GroundTruth.csv`` (``id,benign|malignant`` in the
training CSV, ``id,0.0|1.0`` in the test CSV; a header line is accepted).

Splits: Table 1 has 899/277/101 from the official 900 training and 379 test images. The paper does not say which
two images it dropped, so a seeded draw keeps 899 of the training images (train) and splits 378 of the test images
into val 277 / test 101; the two others are left out.
"""

from __future__ import annotations

from pathlib import Path

from sim4seg.data.converters.base import ConversionProblem, ConvertOptions, Item, Reporter
from sim4seg.data.converters.isic_style import IsicPart, collect_isic_style
from sim4seg.data.converters.layout import binary_flag, normalise_label
from sim4seg.data.converters.splits import apply_split, seeded_split
from sim4seg.data.vocab import M3DS_SUBSETS

SOURCE, SUBSET = "isbi", "ISBI"
PARTS = [
    IsicPart(("ISBI2016_ISIC_Part1_Training_Data",), ("ISBI2016_ISIC_Part1_Training_GroundTruth",),
             ("ISBI2016_ISIC_Part3_Training_GroundTruth.csv",), "train"),
    IsicPart(("ISBI2016_ISIC_Part1_Test_Data",), ("ISBI2016_ISIC_Part1_Test_GroundTruth",),
             ("ISBI2016_ISIC_Part3_Test_GroundTruth.csv",), "test"),
]
# native part -> (Table 1 counts drawn from it, size of the official part)
SPLITS = {"train": ({"train": 899}, 900), "test": ({"val": 277, "test": 101}, 379)}


def label_of_row(row: dict[str, str], csv_path: Path) -> str:
    value = row.get("label", "")
    where = f"{csv_path.name}: {row['image_id']}"
    label = normalise_label(M3DS_SUBSETS[SUBSET], value)
    if label is None:
        label = "malignant" if binary_flag(value, where) else "benign"
    if label not in ("benign", "malignant"):
        raise ConversionProblem(f"{where}: unknown label {value!r}")
    return label


def collect(root: Path, opts: ConvertOptions, rep: Reporter) -> tuple[list[Item], int]:
    items, left_out = [], 0
    for native, (part_items, listed) in collect_isic_style(root, PARTS, rep, M3DS_SUBSETS[SUBSET],
                                                           label_of_row).items():
        counts, total = SPLITS[native]
        assignment = seeded_split(listed, counts, opts.seed, total=total, salt=f"{SUBSET}/{native}")
        kept, left = apply_split(part_items, assignment)
        items += kept
        left_out += left
    return items, left_out
