"""ISIC-style layout (ISBI 2016, ISIC 2017): <Part1 data dir>/ISIC_x.jpg, <Part1 GT dir>/ISIC_x_segmentation.png,
<Part3 csv> with the diagnosis of each image id."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from sim4seg.data.converters.base import ConversionProblem, Item, Reporter
from sim4seg.data.converters.layout import find_dir, find_file, list_images, read_csv_rows
from sim4seg.data.vocab import Subset
from sim4seg.errors import UserError


@dataclass
class IsicPart:
    data_dirs: tuple[str, ...]   # accepted folder names of the images
    mask_dirs: tuple[str, ...]   # accepted folder names of the masks
    csv_names: tuple[str, ...]   # accepted names of the Part 3 label CSV
    native_split: str            # "train", "val" or "test" of the official release (kept in source)


def collect_isic_style(root: Path, parts: list[IsicPart], rep: Reporter, subset: Subset,
                       labels_of_row: Callable[[dict[str, str], Path], str],
                       ) -> dict[str, tuple[list[Item], list[str]]]:
    """Items of each official part found, and all image ids its Part 3 label CSV lists.

    Returns ``{native_split: (items, listed_ids)}``; seeded splits are drawn over ``listed_ids`` so that a partial
    download assigns each image the split it gets from the complete one.

    ``labels_of_row(row, csv_path)`` maps a CSV row (header names lower-cased; a headerless CSV gets
    ``image_id``/``label``) to a canonical label or raises :class:`ConversionProblem`.
    """
    out: dict[str, tuple[list[Item], list[str]]] = {}
    for part in parts:
        csv_path = next((p for n in part.csv_names if (p := find_file(root, n)) is not None), None)
        if csv_path is None:
            continue
        data_dir = find_dir(root, *part.data_dirs)
        mask_dir = find_dir(root, *part.mask_dirs)
        images = {k: v for k, v in list_images(data_dir).items() if not k.endswith("_superpixels")}
        masks = {p.stem.lower().removesuffix("_segmentation"): p for p in list_images(mask_dir).values()}
        items, missing, listed = [], [], []
        for row in _isic_rows(csv_path):
            iid = row["image_id"]
            listed.append(iid)
            try:
                label = labels_of_row(row, csv_path)
            except ConversionProblem as e:
                rep.problem(str(e))
                continue
            img, mask = images.get(iid), masks.get(iid.lower())
            if img is None or mask is None:
                missing.append(f"{iid} ({'image' if img is None else 'mask'})")
                continue
            items.append(Item(
                name=iid, image=img, diagnosis=[label], mask_files=[mask],
                source={"image": f"{data_dir.name}/{img.name}", "mask": f"{mask_dir.name}/{mask.name}",
                        "labels": csv_path.name, "split": part.native_split}))
        rep.missing_files(missing, csv_path.name, root, len(items))
        out[part.native_split] = (items, listed)
    if not out:
        names = " / ".join(p.csv_names[0] for p in parts)
        raise UserError(f"no {subset.name} label CSV ({names}) found under {root}; the diagnosis comes from it")
    return out


def _isic_rows(path: Path) -> list[dict[str, str]]:
    rows = read_csv_rows(path)
    if not rows:
        return []
    if rows[0][0].lower() in ("image_id", "img_id", "image", "id", "name"):
        header = ["image_id"] + [c.lower() for c in rows[0][1:]]
        rows = rows[1:]
    else:  # the official ISBI 2016 CSVs have no header
        header = ["image_id", "label"]
    return [dict(zip(header, r, strict=False)) for r in rows]
