"""Bone Fracture Detection (Darabi, Kaggle; Roboflow veda/bone-fracture-detection-daoon v4): YOLO polygons.

Layout: ``BoneFractureYolo8/data.yaml``, ``{train,valid|val,test}/{images,labels}``. Labels are YOLO-seg polygons
(a 5-value line is read as a box). Diagnosis: the class names of the image's shapes, normalised to the BFD
vocabulary ("elbow positive" -> "elbow fracture", "humerus" -> "humerus fracture", ...). Images without shapes
are left out (the paper's 2,060 fracture images: 1804/173/83 by folder). ``--negatives``: the images without
shapes too, as negatives in their folder's split. ``--per-finding-targets``: one target per shape.

The shipped ``data.yaml`` lists ``3: humerus fracture, 4: humerus`` while the dataset's COCO export says the
reverse (cross-checking the two shows YOLO class 4 is "humerus fracture"). Both names map to the one canonical
label "humerus fracture", so the mis-order cannot change a diagnosis here.
"""

from __future__ import annotations

from pathlib import Path

from sim4seg.data.converters.base import ConvertOptions, Item, Reporter
from sim4seg.data.converters.layout import find_file, normalise_label, require
from sim4seg.data.converters.yolo import collect_yolo, yolo_class_names
from sim4seg.data.vocab import M3DS_SUBSETS
from sim4seg.errors import UserError

SOURCE, SUBSET = "bfd", "BFD"


def collect(root: Path, opts: ConvertOptions, rep: Reporter) -> tuple[list[Item], int]:
    data_yaml = require(find_file(root, "data.yaml", depth=1), "data.yaml", root)
    names = yolo_class_names(data_yaml)
    subset = M3DS_SUBSETS[SUBSET]
    labels = [normalise_label(subset, n) for n in names]
    unknown = [n for n, lbl in zip(names, labels, strict=True) if lbl is None]
    if unknown:
        raise UserError(f"{data_yaml}: class name(s) {unknown} are not in the BFD vocabulary {list(subset.labels)}")

    def label_of(cls: int, where: Path) -> str | None:
        if not 0 <= cls < len(labels):
            rep.problem(f"{where}: class id {cls} is not in data.yaml ({len(labels)} classes)")
            return None
        return labels[cls]

    return collect_yolo(data_yaml.parent, rep, label_of, opts.negatives), 0
