"""The one place that knows each subset: modality, diagnosis labels, their synonyms, and the finding's name.

Prompts (query templates, answers) and the accuracy metric both read from here. A dataset folder may add
its own subsets in ``subsets.json`` (same fields as :class:`Subset`); see :func:`load_vocabulary`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from sim4seg.errors import UserError

MODALITIES = ("x-ray", "dermoscopy", "endoscopy", "ultrasound", "fundus")
SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class Subset:
    """One source dataset of M3DS.

    ``labels`` are canonical diagnosis labels (lower case); ``synonyms`` maps an alternative phrase to its
    canonical label; ``finding`` names what the mask shows ("fracture", "lesion", ...); ``short`` is the
    column name used in the paper's tables.
    """

    name: str
    modality: str
    labels: tuple[str, ...]
    finding: str
    short: str
    organ: str = ""
    synonyms: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.modality not in MODALITIES:
            raise UserError(f"subset {self.name!r}: modality {self.modality!r} is not one of {', '.join(MODALITIES)}")
        for phrase, label in self.synonyms.items():
            if label not in self.labels:
                raise UserError(f"subset {self.name!r}: synonym {phrase!r} points to unknown label {label!r}")


_CHESTX_LABELS = (
    "atelectasis", "calcification", "cardiomegaly", "consolidation", "diffuse nodule", "effusion", "emphysema",
    "fibrosis", "fracture", "mass", "nodule", "pleural thickening", "pneumothorax",
)

M3DS_SUBSETS: dict[str, Subset] = {
    s.name: s
    for s in (
        Subset("FracAtlas", "x-ray", ("fracture",), "fracture", "FracAtlas", "bone",
               {"fractured": "fracture", "broken bone": "fracture"}),
        Subset("BoneFracture", "x-ray", ("fracture",), "fracture", "BF", "bone",
               {"fractured": "fracture", "broken bone": "fracture"}),
        Subset("BFD", "x-ray",
               ("elbow fracture", "finger fracture", "forearm fracture", "humerus fracture", "shoulder fracture",
                "wrist fracture"),
               "fracture", "BFD", "bone",
               {"elbow positive": "elbow fracture", "fingers positive": "finger fracture",
                "fingers fracture": "finger fracture", "wrist positive": "wrist fracture",
                "humerus": "humerus fracture"}),
        Subset("ISBI", "dermoscopy", ("benign", "malignant"), "skin lesion", "ISBI", "skin",
               {"non-cancerous": "benign", "cancerous": "malignant"}),
        Subset("ISIC", "dermoscopy", ("melanoma", "seborrheic keratosis", "nevus"), "skin lesion", "ISIC", "skin",
               {"naevus": "nevus", "mole": "nevus", "seborrhoeic keratosis": "seborrheic keratosis"}),
        Subset("Kvasir-SEG", "endoscopy", ("polyp",), "polyp", "KS", "colon", {"polyps": "polyp"}),
        Subset("BUSI", "ultrasound", ("benign", "malignant", "normal"), "tumor", "BUSI", "breast",
               {"non-cancerous": "benign", "cancerous": "malignant"}),
        Subset("TN3K", "ultrasound", ("benign", "malignant"), "thyroid nodule", "TN3K", "thyroid",
               {"non-cancerous": "benign", "cancerous": "malignant"}),
        Subset("ChestX-Det", "x-ray", _CHESTX_LABELS, "abnormality", "CXD", "chest",
               {"pleural effusion": "effusion", "pleural thickening": "pleural thickening"}),
        Subset("FIVES", "fundus",
               ("age-related macular degeneration", "diabetic retinopathy", "glaucoma", "normal"),
               "retinal vessels", "FIVES", "retina",
               {"amd": "age-related macular degeneration", "dr": "diabetic retinopathy",
                "age related macular degeneration": "age-related macular degeneration"}),
    )
}


def subset_from_dict(name: str, d: dict) -> Subset:
    """Build a :class:`Subset` from a ``subsets.json`` entry, naming the entry on a bad field."""
    try:
        return Subset(
            name=name, modality=d["modality"], labels=tuple(x.lower() for x in d["labels"]),
            finding=d.get("finding", "lesion"), short=d.get("short", name), organ=d.get("organ", ""),
            synonyms={k.lower(): v.lower() for k, v in d.get("synonyms", {}).items()},
        )
    except KeyError as e:
        raise UserError(f"subsets.json entry {name!r} lacks field {e.args[0]!r}") from None


def subset_to_dict(s: Subset) -> dict:
    return {"modality": s.modality, "labels": list(s.labels), "finding": s.finding, "short": s.short,
            "organ": s.organ, "synonyms": dict(s.synonyms)}


def load_vocabulary(root: str | Path | None = None) -> dict[str, Subset]:
    """The M3DS subsets plus those declared in ``root/subsets.json`` (user or synthetic subsets)."""
    vocab = dict(M3DS_SUBSETS)
    if root is not None:
        path = Path(root) / "subsets.json"
        if path.exists():
            try:
                extra = json.loads(path.read_text())
            except json.JSONDecodeError as e:
                raise UserError(f"{path}: not valid JSON ({e}); fix or delete the file") from None
            for name, d in extra.items():
                vocab[name] = subset_from_dict(name, d)
    return vocab
