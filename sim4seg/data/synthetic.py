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

from sim4seg.data.prompts import query_for
from sim4seg.data.schema import RECORDS, Record, append_records
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


def _chest(rng: np.random.Generator, label: str) -> tuple[np.ndarray, np.ndarray]:
    h, w = _size(rng)
    img = np.full((h, w), 40, np.float32)
    mask = np.zeros((h, w), np.uint8)
    lungs = [(int(w * 0.3), int(h * 0.5)), (int(w * 0.7), int(h * 0.5))]
    for cx, cy in lungs:
        cv2.ellipse(img, (cx, cy), (int(w * 0.15), int(h * 0.35)), 0, 0, 360, 90, -1)
    cx, cy = lungs[int(rng.integers(2))]
    if label == "nodule":
        r = int(rng.integers(5, 9))
        c = (cx + int(rng.integers(-w // 16, w // 16 + 1)), cy + int(rng.integers(-h // 8, h // 8 + 1)))
        cv2.circle(mask, c, r, 255, -1)
    else:
        top = cy + int(h * rng.uniform(0.05, 0.15))
        cv2.ellipse(mask, (cx, cy), (int(w * 0.15), int(h * 0.35)), 0, 0, 360, 255, -1)
        mask[:top] = 0
    img[mask > 0] = 200
    img += rng.normal(0, 12, img.shape)
    return np.repeat(np.clip(img, 0, 255).astype(np.uint8)[..., None], 3, 2), mask


def _derm(rng: np.random.Generator, label: str) -> tuple[np.ndarray, np.ndarray]:
    h, w = _size(rng)
    img = np.empty((h, w, 3), np.float32)
    img[:] = (225, 190, 170)
    mask = np.zeros((h, w), np.uint8)
    c = np.array([w / 2 + rng.uniform(-w / 6, w / 6), h / 2 + rng.uniform(-h / 6, h / 6)])
    r = min(h, w) * rng.uniform(0.15, 0.25)
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
    img += rng.normal(0, 8, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8), mask


def _us(rng: np.random.Generator, label: str) -> tuple[np.ndarray, np.ndarray]:
    h, w = _size(rng)
    img = rng.gamma(2.0, 45.0, (h, w)).astype(np.float32)
    mask = np.zeros((h, w), np.uint8)
    c = (int(w / 2 + rng.uniform(-w / 8, w / 8)), int(h / 2 + rng.uniform(-h / 8, h / 8)))
    a, b = int(min(h, w) * rng.uniform(0.25, 0.32)), int(min(h, w) * rng.uniform(0.12, 0.16))
    axes = (a, b) if label == "benign" else (b, a)
    cv2.ellipse(mask, c, axes, float(rng.uniform(-15, 15)), 0, 360, 255, -1)
    if label == "malignant":  # spiculated margin
        for ang in rng.uniform(0, 2 * np.pi, 6):
            tip = (int(c[0] + 1.4 * axes[0] * np.cos(ang)), int(c[1] + 1.4 * axes[1] * np.sin(ang)))
            cv2.line(mask, c, tip, 255, 3)
    img[mask > 0] = rng.gamma(2.0, 6.0, int((mask > 0).sum()))
    img = cv2.GaussianBlur(img, (3, 3), 0)
    return np.repeat(np.clip(img, 0, 255).astype(np.uint8)[..., None], 3, 2), mask


_DRAW = {"SynthChest": _chest, "SynthDerm": _derm, "SynthUS": _us}


def make_sample(subset: str, label: str, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """One synthetic (RGB image [H, W, 3], mask 0/255 [H, W]), deterministic for (subset, label, seed)."""
    return _DRAW[subset](np.random.default_rng(seed), label)


def cot_for(subset: Subset, label: str) -> str:
    return (f"Firstly, the modality of this image is {subset.modality}. Secondly, the image analysis shows "
            f"{_ANALYSIS[(subset.name, label)]}. Finally, the diagnosis is {label}.")


def write_synthetic(out: str | Path, n: int = 300, seed: int = 0, progress: bool = True) -> Path:
    """Write ``n`` records (spread evenly over subsets and labels) to a fresh dataset folder ``out``."""
    out = Path(out)
    if (out / RECORDS).exists():
        raise FileExistsError(f"{out / RECORDS} exists; choose an empty --out folder")
    (out / "subsets.json").parent.mkdir(parents=True, exist_ok=True)
    (out / "subsets.json").write_text(json.dumps({k: subset_to_dict(v) for k, v in SYNTH_SUBSETS.items()}, indent=1))
    rng = np.random.default_rng(seed)
    names = list(SYNTH_SUBSETS)
    records = []
    for i in tqdm(range(n), desc="synth", disable=not progress):
        sub = SYNTH_SUBSETS[names[i % len(names)]]
        label = sub.labels[(i // len(names)) % len(sub.labels)]
        split = _split(rng.random())
        rid = f"{sub.name}/{i:05d}"
        image, mask = make_sample(sub.name, label, seed * 1_000_003 + i)
        rel_img, rel_mask = f"images/{rid}.png", f"masks/{rid}.png"
        for rel, arr in ((rel_img, image[..., ::-1]), (rel_mask, mask)):
            (out / rel).parent.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(out / rel), arr)
        records.append(Record(id=rid, subset=sub.name, modality=sub.modality, split=split, image=rel_img,
                              mask=rel_mask, query=query_for(sub, rid), diagnosis=[label], cot=cot_for(sub, label),
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
