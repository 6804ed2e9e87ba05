"""Roboflow 100 "bone fracture" (Science Research 2022: Bone Fracture Detection): YOLO boxes, 4 classes.

Layout (Roboflow YOLO export): ``data.yaml``, ``{train,valid,test}/{images,labels}``. The classes (angle, fracture,
line, messed_up_angle) all mark the fracture, so every boxed image is diagnosis ``fracture`` and its mask is the
union of its filled boxes. Images without boxes are left out: the paper keeps the 437 of 458 images "containing
fracture regions" (311/83/43 by Roboflow folder). ``--negatives``: the images without boxes too, as negatives in
their folder's split. ``--per-finding-targets``: one target per box or polygon (the four classes may outline one
fracture twice, so these targets can overlap).
"""

from __future__ import annotations

from pathlib import Path

from sim4seg.data.converters.base import ConvertOptions, Item, Reporter
from sim4seg.data.converters.layout import find_file
from sim4seg.data.converters.yolo import collect_yolo, yolo_class_names

SOURCE, SUBSET = "bone_fracture", "BoneFracture"


def collect(root: Path, opts: ConvertOptions, rep: Reporter) -> tuple[list[Item], int]:
    data_yaml = find_file(root, "data.yaml", depth=1)
    base = data_yaml.parent if data_yaml else root
    n_classes = len(yolo_class_names(data_yaml)) if data_yaml else None

    def label_of(cls: int, where: Path) -> str | None:
        if n_classes is not None and not 0 <= cls < n_classes:
            rep.problem(f"{where}: class id {cls} is not in data.yaml ({n_classes} classes)")
            return None
        return "fracture"

    return collect_yolo(base, rep, label_of, opts.negatives), 0
