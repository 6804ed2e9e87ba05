"""Clinical queries and answers in the paper's three formats (the conversation around them is the model's
prompt format: sim4seg.model.prompt_formats).

Queries are chosen per record id (stable across runs and machines); answers are built at training time from
the record, so one dataset serves the ``seg``, ``diagnosis`` and ``cot`` fine-tuning settings.
"""

from __future__ import annotations

import zlib

from sim4seg.data.schema import Record
from sim4seg.data.vocab import Subset
from sim4seg.model.tokens import SEG_TOKEN

ANSWER_FORMATS = ("seg", "diagnosis", "cot")

_LOCATE = (
    "Could you help me identify the {finding} in the {modality_adj} image?",
    "Please segment the {finding} in this {organ} {modality} image.",
    "Where is the {finding} in this {modality} image? Please output the segmentation mask.",
    "Can you locate the {finding} in the {organ} shown in this {modality} image?",
    "Identify and segment the {finding} visible in this {modality} image of the {organ}.",
    "Please find the {finding} in this image and mark it.",
)
_ASK = (
    "Is the {finding} {choices}?",
    "What is the diagnosis: {choices}?",
    "Which diagnosis fits best: {choices}?",
    "Please also tell me whether it is {choices}.",
    "What is your diagnosis among {choices}?",
)
_ASK_SINGLE = (
    "What is the diagnosis?",
    "What is your diagnosis?",
    "What does it show?",
    "Please also give the diagnosis.",
    "What finding is this?",
)
# LISA's answer phrasings for segmentation-only answers.
SEG_ANSWERS = (
    "It is [SEG].",
    "Sure, [SEG].",
    "Sure, it is [SEG].",
    "Sure, the segmentation result is [SEG].",
    "[SEG].",
)

# How a modality reads before "image" ("a dermoscopic image"); any other modality is used as written ("CT").
_MODALITY_ADJ = {"x-ray": "X-ray", "dermoscopy": "dermoscopic", "endoscopy": "endoscopic",
                 "ultrasound": "ultrasound", "fundus": "fundus", "ct": "CT", "mri": "MRI", "mr": "MR", "oct": "OCT",
                 "pet": "PET", "colonoscopy": "colonoscopic", "mammography": "mammographic",
                 "microscopy": "microscopic", "histopathology": "histopathology", "pathology": "pathology"}


def _pick(options: tuple[str, ...], key: str) -> str:
    return options[zlib.crc32(key.encode()) % len(options)]


def join_labels(labels: list[str] | tuple[str, ...], conj: str = "or") -> str:
    labels = list(labels)
    return labels[0] if len(labels) == 1 else f"{', '.join(labels[:-1])} {conj} {labels[-1]}"


def query_for(subset: Subset, record_id: str) -> str:
    """A clinical query for a record: where is the finding, and which diagnosis. Deterministic per id."""
    adj = _MODALITY_ADJ.get(subset.modality.lower(), subset.modality)
    fields = {"finding": subset.finding, "organ": subset.organ or "body", "modality": subset.modality,
              "modality_adj": f"{subset.organ} {adj}".strip(),
              "choices": join_labels(subset.labels)}
    ask = _ASK if len(subset.labels) > 1 else _ASK_SINGLE
    return f"{_pick(_LOCATE, 'q' + record_id)} {_pick(ask, 'a' + record_id)}".format(**fields)


# A negative's answer: no [SEG] (no mask), so no new vocabulary (sim4seg.metrics.negatives).
NO_FINDING = "No abnormality is found."


def answer_for(fmt: str, record_id: str, diagnosis: list[str], cot: str | None, *, negative: bool = False,
               targets: list[str] | None = None) -> str | None:
    """The target answer in one of the three fine-tuning formats; ``None`` when ``cot`` is needed but missing.

    ``negative``: an image with no finding; the answer says so without ``[SEG]`` ("No abnormality is found.
    The diagnosis is normal."). ``targets``: the labels of several findings in the record's order; each is
    named and followed by its own ``[SEG]`` ("The findings are effusion [SEG] and nodule [SEG]."), one target
    mask per ``[SEG]`` in that order. One target or none: the paper's single-[SEG] answers.
    """
    if fmt not in ANSWER_FORMATS:
        raise ValueError(f"answer format {fmt!r} is not one of {ANSWER_FORMATS}")
    if fmt == "cot" and not cot:
        return None
    if negative:
        lead = NO_FINDING
    elif targets and len(targets) > 1:
        findings = join_labels([f"{label} {SEG_TOKEN}" for label in targets], "and")
        lead = f"{'Sure, the' if fmt == 'seg' else 'The'} findings are {findings}."  # LISA's "Sure, ..." for seg
    else:
        lead = _pick(SEG_ANSWERS, record_id) if fmt == "seg" else f"It is {SEG_TOKEN}."
    if fmt == "seg":
        return lead
    if fmt == "diagnosis":
        return f"{lead} The diagnosis is {join_labels(diagnosis, 'and')}."
    return f"{lead} {cot.strip()}"


def record_answer(fmt: str, rec: Record) -> str | None:
    """:func:`answer_for` of a record: a negative says "no finding", several targets each get a [SEG]."""
    return answer_for(fmt, rec.id, rec.diagnosis, rec.cot, negative=rec.is_negative,
                      targets=[t["label"] for t in rec.targets or []])
