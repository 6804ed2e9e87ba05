"""The one place that knows each subset: modality, diagnosis labels, their synonyms, and the finding's name.

Prompts (query templates, answers) and the accuracy metric both read from here. A dataset folder may add
its own subsets in ``subsets.json`` (the fields of :class:`Subset`; documented in data/README.md); see
:func:`load_vocabulary`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from sim4seg.errors import UserError

# The paper's five modalities (M3DS). Modalities are open: a subset may name any other ("CT", "MRI", "OCT" ...).
MODALITIES = ("x-ray", "dermoscopy", "endoscopy", "ultrasound", "fundus")
SPLITS = ("train", "val", "test")
# subsets.json fields: required, then optional with their defaults (``name`` is the entry's key).
REQUIRED_FIELDS = ("modality", "labels")
OPTIONAL_FIELDS = {"finding": "lesion", "short": None, "organ": "", "synonyms": {}, "override": False}


@dataclass(frozen=True)
class Subset:
    """One source dataset of M3DS, or one declared in a dataset's ``subsets.json``.

    ``modality`` is any non-empty string (the paper's five are :data:`MODALITIES`); ``labels`` are canonical
    diagnosis labels (lower case); ``synonyms`` maps an alternative phrase to its canonical label; ``finding``
    names what the mask shows ("fracture", "lesion", ...); ``short`` is the column name used in the paper's
    tables; ``organ`` goes into the queries ("breast", "retina").
    """

    name: str
    modality: str
    labels: tuple[str, ...]
    finding: str
    short: str
    organ: str = ""
    synonyms: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.modality, str) or not self.modality.strip():
            raise UserError(f"subset {self.name!r}: modality must be a non-empty string, got {self.modality!r}")
        if not self.labels or not all(isinstance(x, str) and x.strip() for x in self.labels):
            raise UserError(f"subset {self.name!r}: labels must be a non-empty list of non-empty strings")
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


def _typed(where: str, key: str, value: object, kind: type, what: str) -> None:
    if not isinstance(value, kind):
        raise UserError(f"{where}: field {key!r} must be {what}, got {value!r}")


def subset_from_dict(name: str, d: dict, where: str = "subsets.json") -> Subset:
    """Build a :class:`Subset` from a ``subsets.json`` entry; a missing, unknown or mistyped field is an error
    naming the entry and the field (a typo such as ``findings`` must not fall back to the default)."""
    where = f"{where}: entry {name!r}"
    if not isinstance(d, dict):
        raise UserError(f"{where}: expected an object of fields, got {type(d).__name__}")
    known = (*REQUIRED_FIELDS, *OPTIONAL_FIELDS)
    unknown = [k for k in d if k not in known]
    if unknown:
        raise UserError(f"{where}: unknown field(s) {', '.join(map(repr, unknown))}; the fields are "
                        f"{', '.join(known)} (see data/README.md)")
    missing = [k for k in REQUIRED_FIELDS if k not in d]
    if missing:
        raise UserError(f"{where}: lacks field(s) {', '.join(map(repr, missing))}")
    _typed(where, "modality", d["modality"], str, "a string such as \"ultrasound\" or \"CT\"")
    _typed(where, "labels", d["labels"], list, "a list of label strings")
    for key in ("finding", "short", "organ"):
        _typed(where, key, d.get(key, ""), str, "a string")
    _typed(where, "synonyms", d.get("synonyms", {}), dict, "an object {phrase: label}")
    _typed(where, "override", d.get("override", False), bool, "true or false")
    if not all(isinstance(x, str) for x in [*d["labels"], *d.get("synonyms", {}), *d.get("synonyms", {}).values()]):
        raise UserError(f"{where}: labels and synonyms must be strings")
    return Subset(
        name=name, modality=d["modality"].strip(), labels=tuple(x.strip().lower() for x in d["labels"]),
        finding=d.get("finding", OPTIONAL_FIELDS["finding"]), short=d.get("short") or name,
        organ=d.get("organ", OPTIONAL_FIELDS["organ"]),
        synonyms={k.strip().lower(): v.strip().lower() for k, v in d.get("synonyms", {}).items()},
    )


def subset_to_dict(s: Subset) -> dict:
    return {"modality": s.modality, "labels": list(s.labels), "finding": s.finding, "short": s.short,
            "organ": s.organ, "synonyms": dict(s.synonyms)}


def load_vocabulary(root: str | Path | None = None) -> dict[str, Subset]:
    """The M3DS subsets plus those declared in ``root/subsets.json`` (user or synthetic subsets).

    An entry named like a built-in subset replaces it only with ``"override": true``.
    """
    vocab = dict(M3DS_SUBSETS)
    if root is not None:
        path = Path(root) / "subsets.json"
        if path.exists():
            try:
                extra = json.loads(path.read_text())
            except json.JSONDecodeError as e:
                raise UserError(f"{path}: not valid JSON ({e}); fix or delete the file") from None
            if not isinstance(extra, dict):
                raise UserError(f"{path}: expected an object {{subset name: fields}}, got {type(extra).__name__}")
            for name, d in extra.items():
                sub = subset_from_dict(name, d, str(path))
                if name in M3DS_SUBSETS and not d.get("override", False):
                    raise UserError(f"{path}: entry {name!r} would replace the built-in M3DS subset {name!r}; "
                                    "rename it, or add \"override\": true to replace it on purpose")
                vocab[name] = sub
    return vocab
