"""YOLO exports (Roboflow "bone fracture", Bone Fracture Detection): label files, class names, items."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sim4seg.data.converters.base import ConversionProblem, Finding, Item, Reporter
from sim4seg.data.converters.layout import list_images
from sim4seg.data.schema import NORMAL
from sim4seg.errors import UserError


@dataclass
class YoloShape:
    cls: int
    box: tuple[float, float, float, float] | None = None  # normalised (x0, y0, x1, y1)
    polygon: list[float] | None = None  # normalised flat x, y


def parse_yolo_label(path: Path) -> list[YoloShape]:
    """Parse a YOLO txt: ``cls cx cy w h`` (detection) or ``cls x1 y1 x2 y2 ...`` (segmentation polygon)."""
    shapes = []
    for i, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        tok = line.split()
        if not tok:
            continue
        try:
            cls, vals = int(float(tok[0])), [float(t) for t in tok[1:]]
        except ValueError:
            raise ConversionProblem(f"{path}:{i}: not a YOLO label line ({line.strip()[:40]!r})") from None
        if not all(np.isfinite(vals)):
            raise ConversionProblem(f"{path}:{i}: non-finite coordinate")
        if len(vals) == 4:
            cx, cy, w, h = vals
            shapes.append(YoloShape(cls, box=(cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2)))
        elif len(vals) >= 6 and len(vals) % 2 == 0:
            shapes.append(YoloShape(cls, polygon=vals))
        else:
            raise ConversionProblem(f"{path}:{i}: {len(vals)} coordinates; expected 4 (box) or an even number >= 6 "
                                    "(polygon)")
    return shapes


def yolo_class_names(data_yaml: Path) -> list[str]:
    """Class names from a Roboflow/Ultralytics ``data.yaml`` (``names`` as a list or an ``{id: name}`` map)."""
    import yaml

    try:
        d = yaml.safe_load(data_yaml.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise UserError(f"{data_yaml}: not valid YAML ({str(e).splitlines()[0]})") from None
    names = (d or {}).get("names")
    if isinstance(names, dict):
        names = [names[k] for k in sorted(names, key=int)]
    if not isinstance(names, list) or not names:
        raise UserError(f"{data_yaml}: no 'names' list of classes")
    return [str(n) for n in names]


YOLO_SPLIT_DIRS = {"train": "train", "valid": "val", "val": "val", "test": "test"}


def collect_yolo(root: Path, rep: Reporter, label_of: Callable[[int, Path], str | None], negatives: bool = False,
                 ) -> list[Item]:
    """Items of a YOLO export: ``{train,valid|val,test}/{images,labels}``; the folder is the split.

    An image whose label file is empty or absent has no finding (Ultralytics' convention for background
    images): left out (M3DS keeps positives only), or with ``negatives`` a negative item in its folder's split.
    ``label_of(cls, label_file)`` gives the canonical diagnosis of a class id, or None to reject it.
    """
    items: list[Item] = []
    seen_split_dir = False
    for folder, split in YOLO_SPLIT_DIRS.items():
        img_dir, lab_dir = root / folder / "images", root / folder / "labels"
        if not img_dir.is_dir() and not lab_dir.is_dir():
            continue
        seen_split_dir = True
        images = list_images(img_dir)
        labels = {p.stem: p for p in sorted(lab_dir.glob("*.txt"))} if lab_dir.is_dir() else {}
        missing = []
        unlabelled = [stem for stem in images if stem not in labels] if negatives else []
        for stem in [*labels, *unlabelled]:  # the label files' order first, as without negatives
            lab = labels.get(stem)
            try:
                shapes = parse_yolo_label(lab) if lab else []
            except ConversionProblem as e:
                rep.problem(str(e))
                continue
            if not shapes and not negatives:
                continue  # a negative image: no fracture, not part of M3DS
            if stem not in images:
                missing.append(f"{folder}/images/{stem}.*")
                continue
            img = images[stem]
            source = {"image": f"{folder}/images/{img.name}", "label": f"{folder}/labels/{lab.name}" if lab else None,
                      "split": folder, "classes": sorted({s.cls for s in shapes})}
            if not shapes:
                items.append(Item(name=f"{folder}/{stem}", image=img, split=split, diagnosis=[NORMAL], source=source,
                                  negative=True))
                continue
            found = []
            for s in shapes:
                lbl = label_of(s.cls, lab)
                if lbl is None:  # reported by label_of; one report per file
                    break
                found.append(Finding(lbl, polygons=[s.polygon] if s.polygon else [], boxes=[s.box] if s.box else []))
            else:
                items.append(Item(
                    name=f"{folder}/{stem}", image=img, split=split, diagnosis=sorted({f.label for f in found}),
                    polygons=[s.polygon for s in shapes if s.polygon], boxes=[s.box for s in shapes if s.box],
                    normalised=True, source=source, findings=found))
        rep.missing_files(missing, f"{folder}/labels", root, len(images))
    if not seen_split_dir:
        raise UserError(f"no train/valid/test folders with images/ and labels/ under {root} (a YOLO export)")
    return items
