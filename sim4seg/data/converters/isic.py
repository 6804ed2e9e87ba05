"""ISIC 2017 (Codella et al. 2018): dermoscopy, lesion masks, melanoma / seborrheic keratosis / nevus.

Layout: ``ISIC-2017_{Training,Validation,Test_v2}_Data/ISIC_*.jpg`` (``*_superpixels.png`` ignored),
``ISIC-2017_{...}_Part1_GroundTruth/ISIC_*_segmentation.png``, ``ISIC-2017_{...}_Part3_GroundTruth.csv``
(``image_id,melanoma,seborrheic_keratosis`` as 0/1; neither means nevus). Splits are the official ones:
2000/150/600, exactly Table 1.
"""

from __future__ import annotations

from pathlib import Path

from sim4seg.data.converters.base import ConversionProblem, ConvertOptions, Item, Reporter
from sim4seg.data.converters.isic_style import IsicPart, collect_isic_style
from sim4seg.data.converters.layout import binary_flag
from sim4seg.data.vocab import M3DS_SUBSETS

SOURCE, SUBSET = "isic", "ISIC"
PARTS = [
    IsicPart((f"ISIC-2017_{p}_Data",), (f"ISIC-2017_{p}_Part1_GroundTruth",), (f"ISIC-2017_{p}_Part3_GroundTruth.csv",),
             split)
    for p, split in (("Training", "train"), ("Validation", "val"), ("Test_v2", "test"))
]


def label_of_row(row: dict[str, str], csv_path: Path) -> str:
    where = f"{csv_path.name}: {row['image_id']}"
    if "melanoma" not in row or "seborrheic_keratosis" not in row:
        raise ConversionProblem(f"{where}: expected columns image_id,melanoma,seborrheic_keratosis")
    mel = binary_flag(row["melanoma"], where)
    sk = binary_flag(row["seborrheic_keratosis"], where)
    if mel and sk:
        raise ConversionProblem(f"{where}: both melanoma and seborrheic_keratosis are 1")
    return "melanoma" if mel else "seborrheic keratosis" if sk else "nevus"


def collect(root: Path, opts: ConvertOptions, rep: Reporter) -> tuple[list[Item], int]:
    items = []
    for native, (part_items, _) in collect_isic_style(root, PARTS, rep, M3DS_SUBSETS[SUBSET], label_of_row).items():
        for it in part_items:
            it.split = native
        items += part_items
    return items, 0
