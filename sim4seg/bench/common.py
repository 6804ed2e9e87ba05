"""What every benchmark shares: the report (table + JSON lines + targets), median timing, model building from a
composed config, and a synthetic M3DS folder at chosen image sizes."""

from __future__ import annotations

import json
import math
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np


class Report:
    """Collects a benchmark's JSON records; prints the human table to stdout (stderr with --json)."""

    def __init__(self, name: str, as_json: bool):
        self.name, self.as_json = name, as_json
        self.records: list[dict] = []
        self.targets: dict[str, dict] = {}

    @property
    def _text(self):
        return sys.stderr if self.as_json else sys.stdout

    def say(self, line: str = "") -> None:
        print(line, file=self._text, flush=True)

    def emit(self, **record: Any) -> dict:
        rec = {"benchmark": self.name, **{k: _jsonable(v) for k, v in record.items()}}
        self.records.append(rec)
        if self.as_json:
            print(json.dumps(rec), flush=True)
        return rec

    def table(self, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        cells = [[_fmt(c) for c in r] for r in [list(header), *rows]]
        widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
        for k, r in enumerate(cells):
            self.say("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))))
            if k == 0:
                self.say("  ".join("-" * w for w in widths))

    def target(self, key: str, met: bool, text: str) -> None:
        """Record a target; a missed one is printed as ``target not met: ...``."""
        self.targets[key] = {"met": bool(met), "text": text}
        self.say(("target met: " if met else "target not met: ") + text)

    def headline(self, key: str, value: float, **extra: Any) -> dict:
        return self.emit(headline=key, value=value, targets=self.targets, **extra)


def _jsonable(v: Any) -> Any:
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, (np.integer,)):
        return int(v)
    if isinstance(v, (float, np.floating)):
        v = float(v)
        return round(v, 6) if math.isfinite(v) else None
    return v


def _fmt(c: Any) -> str:
    if isinstance(c, float):
        return f"{c:.4g}" if abs(c) < 1000 else f"{c:.0f}"
    return str(c)


def median(xs: Sequence[float]) -> float:
    return float(statistics.median(xs))


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def build(overrides: Sequence[str], name: str = "train"):
    """(cfg, model, processor) of a composed config."""
    from sim4seg.config import compose
    from sim4seg.model.builder import build_model

    cfg = compose(name, overrides)
    model, proc = build_model(cfg.model, cfg.rvls2m, cfg.loss)
    return cfg, model, proc


def write_dataset(root: Path, n: int, sizes: Sequence[tuple[int, int]] | None = None,
                  exts: Sequence[str] = (".png",), split: str = "train") -> Path:
    """An M3DS folder of ``n`` synthetic records, all in ``split`` (``sim4seg data synth`` spreads them over
    splits at the generator's sizes). ``sizes``: (H, W) cycled over the records (images upscaled bilinearly,
    masks nearest); ``exts``: image formats cycled (.png / .jpg)."""
    import cv2

    from sim4seg.data.prompts import query_for
    from sim4seg.data.schema import Record, append_records
    from sim4seg.data.synthetic import SYNTH_SUBSETS, cot_for, make_sample
    from sim4seg.data.vocab import subset_to_dict

    root.mkdir(parents=True, exist_ok=True)
    (root / "subsets.json").write_text(json.dumps({k: subset_to_dict(v) for k, v in SYNTH_SUBSETS.items()}))
    names, records = list(SYNTH_SUBSETS), []
    for i in range(n):
        sub = SYNTH_SUBSETS[names[i % len(names)]]
        label = sub.labels[(i // len(names)) % len(sub.labels)]
        image, mask = make_sample(sub.name, label, 1000 + i)
        if sizes:
            h, w = sizes[i % len(sizes)]
            image = cv2.resize(image, (w, h), interpolation=cv2.INTER_LINEAR)
            mask = cv2.resize(mask, (w, h), interpolation=cv2.INTER_NEAREST)
        rid = f"{sub.name}/{i:05d}"
        rel_img, rel_mask = f"images/{rid}{exts[i % len(exts)]}", f"masks/{rid}.png"
        for rel, arr in ((rel_img, image[..., ::-1]), (rel_mask, mask)):
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(root / rel), arr)
        records.append(Record(id=rid, subset=sub.name, modality=sub.modality, split=split, image=rel_img,
                              mask=rel_mask, query=query_for(sub, rid), diagnosis=[label], cot=cot_for(sub, label)))
    append_records(root, records)
    return root
