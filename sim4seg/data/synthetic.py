"""Synthetic M3DS: three toy subsets whose diagnosis is visible in the image, so the whole pipeline can run and
learn on a CPU. Written in the M3DS record format (records.jsonl, images/, masks/, subsets.json).

- ``SynthChest`` (x-ray): grey lungs; a small bright round ``nodule`` or a wide bright basal ``effusion``.
- ``SynthDerm`` (dermoscopy): skin-coloured RGB; a round light ``benign`` blob or an irregular dark ``malignant`` one.
- ``SynthUS`` (ultrasound): speckle; a dark oval, wider-than-tall (``benign``) or taller-than-wide (``malignant``).
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from sim4seg.data.prompts import join_labels, query_for
from sim4seg.data.schema import NORMAL, RECORDS, Record, append_records
from sim4seg.data.vocab import Subset, subset_from_dict, subset_to_dict

SYNTH_SUBSETS = {
    "SynthChest": subset_from_dict("SynthChest", {"modality": "x-ray", "labels": ["nodule", "effusion"],
                                                  "finding": "abnormality", "short": "SChest", "organ": "chest"}),
    "SynthDerm": subset_from_dict("SynthDerm", {"modality": "dermoscopy", "labels": ["benign", "malignant"],
                                                "finding": "skin lesion", "short": "SDerm", "organ": "skin",
                                                "synonyms": {"cancerous": "malignant"}}),
    "SynthUS": subset_from_dict("SynthUS", {"modality": "ultrasound", "labels": ["benign", "malignant"],
                                            "finding": "tumor", "short": "SUS", "organ": "breast",
                                            "synonyms": {"cancerous": "malignant"}}),
}
SPLIT_FRACTIONS = (("train", 0.7), ("val", 0.1), ("test", 0.2))

_ANALYSIS = {
    ("SynthChest", "nodule"): "a small, round, well-defined bright opacity inside the lung field",
    ("SynthChest", "effusion"): "a wide bright opacity filling the base of the lung with a meniscus-like upper edge",
    ("SynthDerm", "benign"): "a round, light brown lesion with smooth, regular borders",
    ("SynthDerm", "malignant"): "a dark lesion with irregular, star-shaped borders",
    ("SynthUS", "benign"): "a hypoechoic oval mass that is wider than tall with smooth margins",
    ("SynthUS", "malignant"): "a hypoechoic mass that is taller than wide with irregular margins",
}


def _size(rng: np.random.Generator) -> tuple[int, int]:
    return int(rng.integers(96, 161)), int(rng.integers(96, 161))


def _chest(rng: np.random.Generator, labels: list[str]) -> tuple[np.ndarray, list[np.ndarray]]:
    h, w = _size(rng)
    img = np.full((h, w), 40, np.float32)
    lungs = [(int(w * 0.3), int(h * 0.5)), (int(w * 0.7), int(h * 0.5))]
    for cx, cy in lungs:
        cv2.ellipse(img, (cx, cy), (int(w * 0.15), int(h * 0.35)), 0, 0, 360, 90, -1)
    masks = []
    first = int(rng.integers(2)) if labels else 0
    for j, label in enumerate(labels):  # a second finding goes to the other lung
        cx, cy = lungs[(first + j) % 2]
        mask = np.zeros((h, w), np.uint8)
        if label == "nodule":
            r = int(rng.integers(5, 9))
            c = (cx + int(rng.integers(-w // 16, w // 16 + 1)), cy + int(rng.integers(-h // 8, h // 8 + 1)))
            cv2.circle(mask, c, r, 255, -1)
        else:
            top = cy + int(h * rng.uniform(0.05, 0.15))
            cv2.ellipse(mask, (cx, cy), (int(w * 0.15), int(h * 0.35)), 0, 0, 360, 255, -1)
            mask[:top] = 0
        img[mask > 0] = 200
        masks.append(mask)
    img += rng.normal(0, 12, img.shape)
    return np.repeat(np.clip(img, 0, 255).astype(np.uint8)[..., None], 3, 2), masks


def _derm(rng: np.random.Generator, labels: list[str]) -> tuple[np.ndarray, list[np.ndarray]]:
    h, w = _size(rng)
    img = np.empty((h, w, 3), np.float32)
    img[:] = (225, 190, 170)
    masks = []
    for j, label in enumerate(labels):  # a second lesion sits in the opposite half
        mask = np.zeros((h, w), np.uint8)
        c = np.array([w / 2 + rng.uniform(-w / 6, w / 6), h / 2 + rng.uniform(-h / 6, h / 6)])
        r = min(h, w) * rng.uniform(0.15, 0.25)
        if len(labels) > 1:
            c[0], r = (w * (0.27 if j == 0 else 0.73), r * 0.6)
        if label == "benign":
            cv2.circle(mask, (int(c[0]), int(c[1])), int(r), 255, -1)
            colour = (170, 120, 80)
        else:
            angles = np.linspace(0, 2 * np.pi, 14, endpoint=False)
            radii = r * np.where(np.arange(14) % 2 == 0, 1.3, 0.6) * rng.uniform(0.85, 1.15, 14)
            pts = np.stack([c[0] + radii * np.cos(angles), c[1] + radii * np.sin(angles)], 1).astype(np.int32)
            cv2.fillPoly(mask, [pts], 255)
            colour = (70, 40, 30)
        img[mask > 0] = colour
        masks.append(mask)
    img += rng.normal(0, 8, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8), masks


def _us(rng: np.random.Generator, labels: list[str]) -> tuple[np.ndarray, list[np.ndarray]]:
    h, w = _size(rng)
    img = rng.gamma(2.0, 45.0, (h, w)).astype(np.float32)
    masks = []
    for j, label in enumerate(labels):  # a second mass sits in the opposite half, smaller
        mask = np.zeros((h, w), np.uint8)
        c = (int(w / 2 + rng.uniform(-w / 8, w / 8)), int(h / 2 + rng.uniform(-h / 8, h / 8)))
        a, b = int(min(h, w) * rng.uniform(0.25, 0.32)), int(min(h, w) * rng.uniform(0.12, 0.16))
        if len(labels) > 1:
            c, a, b = (int(w * (0.27 if j == 0 else 0.73)), c[1]), int(a * 0.6), int(b * 0.6)
        axes = (a, b) if label == "benign" else (b, a)
        cv2.ellipse(mask, c, axes, float(rng.uniform(-15, 15)), 0, 360, 255, -1)
        if label == "malignant":  # spiculated margin
            for ang in rng.uniform(0, 2 * np.pi, 6):
                tip = (int(c[0] + 1.4 * axes[0] * np.cos(ang)), int(c[1] + 1.4 * axes[1] * np.sin(ang)))
                cv2.line(mask, c, tip, 255, 3)
        img[mask > 0] = rng.gamma(2.0, 6.0, int((mask > 0).sum()))
        masks.append(mask)
    img = cv2.GaussianBlur(img, (3, 3), 0)
    return np.repeat(np.clip(img, 0, 255).astype(np.uint8)[..., None], 3, 2), masks


_DRAW = {"SynthChest": _chest, "SynthDerm": _derm, "SynthUS": _us}


def make_sample(subset: str, label: str, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """One synthetic (RGB image [H, W, 3], mask 0/255 [H, W]), deterministic for (subset, label, seed)."""
    image, (mask,) = make_findings(subset, [label], seed)
    return image, mask


def make_findings(subset: str, labels: list[str], seed: int) -> tuple[np.ndarray, list[np.ndarray]]:
    """An image with one lesion per label (none: a normal image) and each lesion's 0/255 mask [H, W]."""
    return _DRAW[subset](np.random.default_rng(seed), list(labels))


def cot_for(subset: Subset, label: str | list[str]) -> str:
    """The reference chain of thought for an image with the findings ``label`` (none: a normal image)."""
    labels = [label] if isinstance(label, str) else list(label)
    seen = " and ".join(_ANALYSIS[(subset.name, x)] for x in labels) or "no abnormality"
    return (f"Firstly, the modality of this image is {subset.modality}. Secondly, the image analysis shows "
            f"{seen}. Finally, the diagnosis is {join_labels(labels or [NORMAL], 'and')}.")


def write_synthetic(out: str | Path, n: int = 300, seed: int = 0, progress: bool = True, negatives: float = 0.0,
                    multi_target: float = 0.0) -> Path:
    """Write ``n`` records (spread evenly over subsets and labels) to a fresh dataset folder ``out``.

    ``negatives``: fraction of images with no finding (mask ``null``, diagnosis ``normal``); ``multi_target``:
    fraction of the others with two findings of different labels, each with its own mask in ``targets`` (the
    record's ``mask`` is their union, as in the paper setting). With both 0 the output is the paper-style set.
    """
    out = Path(out)
    if (out / RECORDS).exists():
        raise FileExistsError(f"{out / RECORDS} exists; choose an empty --out folder")
    for name, frac in (("--negatives", negatives), ("--multi-target", multi_target)):
        if not 0.0 <= frac <= 1.0:
            raise ValueError(f"{name} {frac}: a fraction between 0 and 1")
    (out / "subsets.json").parent.mkdir(parents=True, exist_ok=True)
    (out / "subsets.json").write_text(json.dumps({k: subset_to_dict(v) for k, v in SYNTH_SUBSETS.items()}, indent=1))
    rng = np.random.default_rng(seed)
    # Which images are negatives / have two findings: exact counts from their own stream, so the paper-style
    # records (and their splits) stay as they were.
    order = np.random.default_rng([seed, 1]).permutation(n)
    n_neg = round(n * negatives)
    negative = set(order[:n_neg].tolist())
    multi = set(order[n_neg:n_neg + round((n - n_neg) * multi_target)].tolist())
    names = list(SYNTH_SUBSETS)
    records = []
    for i in tqdm(range(n), desc="synth", disable=not progress):
        sub = SYNTH_SUBSETS[names[i % len(names)]]
        label = sub.labels[(i // len(names)) % len(sub.labels)]
        split = _split(rng.random())
        rid = f"{sub.name}/{i:05d}"
        labels = [] if i in negative else [label]
        if i in multi:
            labels.append(next(x for x in sub.labels if x != label))
        image, masks = make_findings(sub.name, labels, seed * 1_000_003 + i)
        rel_img = f"images/{rid}.png"
        files = [(rel_img, image[..., ::-1])]
        rel_mask, targets = None, None
        if masks:
            rel_mask = f"masks/{rid}.png"
            files.append((rel_mask, np.maximum.reduce(masks)))
        if len(masks) > 1:
            targets = [{"label": x, "mask": f"masks/{rid}_{j}.png"} for j, x in enumerate(labels)]
            files += [(t["mask"], m) for t, m in zip(targets, masks)]
        for rel, arr in files:
            (out / rel).parent.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(out / rel), arr)
        records.append(Record(id=rid, subset=sub.name, modality=sub.modality, split=split, image=rel_img,
                              mask=rel_mask, query=query_for(sub, rid), diagnosis=labels or [NORMAL],
                              cot=cot_for(sub, labels), targets=targets,
                              source={"generator": "sim4seg.data.synthetic", "seed": seed, "index": i}))
    append_records(out, records)
    return out


def _split(u: float) -> str:
    acc = 0.0
    for name, frac in SPLIT_FRACTIONS:
        acc += frac
        if u < acc:
            return name
    return SPLIT_FRACTIONS[-1][0]
