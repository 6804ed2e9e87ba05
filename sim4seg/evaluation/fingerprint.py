"""What an evaluation's rows depend on, kept beside them (``OUT/fingerprint.json``), so a rerun into the same
``out`` resumes only the same evaluation.

A fingerprint is a flat dict of named parts: the checkpoint's content (``config.yaml`` and
``trainable.safetensors``; weights loaded from elsewhere are named by their paths in ``config.yaml``), mode,
split, the data (every selected record, the files it names, the vocabulary of its subsets, the unusable lines of
``records.jsonl``, the data settings), the RVLS2M override, test-time scaling and generation settings (seed,
``max_new_tokens`` as used) and :data:`RULES_VERSION`. Settings that do not change a row (``batch_size``,
``max_samples``, ``progress``, overlays, ``cache_dir``, workers) are left out, so a resume may change them.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from sim4seg.data.dataset import M3DSDataset
from sim4seg.data.vocab import subset_to_dict
from sim4seg.errors import UserError
from sim4seg.jsonl import atomic_write_json
from sim4seg.metrics.diagnosis import DIAGNOSIS_RULE_VERSION

# Bump when a row's meaning changes: the scoring rule (evaluation.rows), sim4seg.metrics' diagnosis rule, TTS.
RULES_VERSION = 3  # 3: negatives, several targets, region diagnostics, the TTS no-mask vote
FILE = "fingerprint.json"
# Everything an evaluation writes into ``out``, removed by ``overwrite=true``.
OUTPUTS = ("samples.jsonl", "samples.rank*.jsonl", "metrics.json", "metrics.md", "overlays/*.png",
           "baselines.md", "baselines.json", FILE)


def _hash_files(paths: list[Path]) -> str:
    h = hashlib.sha256()
    for p in paths:
        h.update(p.name.encode())
        if p.exists():
            with open(p, "rb") as f:
                while chunk := f.read(1 << 20):
                    h.update(chunk)
        else:
            h.update(b"missing")
    return h.hexdigest()[:16]


def checkpoint_hash(ckpt: str | Path) -> str:
    ckpt = Path(ckpt)
    return _hash_files([ckpt / "config.yaml", ckpt / "trainable.safetensors"])


def data_hash(ds: M3DSDataset) -> str:
    """Records of the split (their JSON), the image and mask files they name (content), their subsets'
    vocabulary and the lines of records.jsonl that cannot be used (they become error rows)."""
    h = hashlib.sha256()
    for rec in ds.records:
        h.update(rec.to_json().encode())
        files = [rec.image, rec.mask, *[t["mask"] for t in rec.targets or [] if t.get("mask")]]
        h.update(_hash_files([ds.root / f for f in files if f]).encode())
    h.update(json.dumps({s: subset_to_dict(ds.vocab[s]) for s in sorted({r.subset for r in ds.records})},
                        sort_keys=True).encode())
    h.update(json.dumps(ds.problems).encode())
    return h.hexdigest()[:16]


def fingerprint(cfg: DictConfig, ds: M3DSDataset, max_new_tokens: int | None) -> dict:
    """The parts of an evaluation that decide its rows (module docstring)."""
    d = cfg.data
    settings = {k: OmegaConf.to_container(d[k]) if OmegaConf.is_config(d[k]) else d[k]
                for k in ("include_subsets", "exclude_subsets", "include_modalities", "exclude_modalities",
                          "on_error", "max_pixels")}
    rv = cfg.get("rvls2m")
    generate = cfg.mode == "generate"
    return {"rules_version": RULES_VERSION, "diagnosis_rule": DIAGNOSIS_RULE_VERSION, "ckpt": checkpoint_hash(cfg.ckpt), "mode": cfg.mode, "split": cfg.split,
            "data": data_hash(ds), "data settings": settings,
            "rvls2m": OmegaConf.to_container(rv, resolve=True) if rv is not None else None,
            "tts": OmegaConf.to_container(cfg.tts, resolve=True) if generate else None,
            "seed": cfg.seed if generate else None, "max_new_tokens": max_new_tokens}


def differences(old: dict, new: dict) -> list[str]:
    """Names of the parts that differ, with both values where they are short enough to read."""
    out = []
    for k in sorted(set(old) | set(new)):
        a, b = old.get(k), new.get(k)
        if a != b:
            out.append(f"{k} ({a} -> {b})" if len(f"{a}{b}") <= 60 else k)
    return out


def claim(out: Path, fp: dict, overwrite: bool) -> None:
    """Make ``out`` hold rows of this evaluation only: resume when its fingerprint matches, start fresh when it
    holds no rows (or ``overwrite``), otherwise refuse in one line naming what differs."""
    if overwrite:
        for pattern in OUTPUTS:
            for p in out.glob(pattern):
                p.unlink()
    path = out / FILE
    has_rows = any(p.stat().st_size for p in [*out.glob("samples.jsonl"), *out.glob("samples.rank*.jsonl")])
    if has_rows:
        if not path.exists():
            raise UserError(f"out={out} holds samples.jsonl without {FILE} (an older or foreign evaluation); "
                            "pass another out= or overwrite=true to replace its results")
        old = json.loads(path.read_text())
        diff = differences(old, fp)
        if diff:
            raise UserError(f"out={out} holds rows of another evaluation (differs: {'; '.join(diff)}); pass "
                            "another out= or overwrite=true to replace them")
        return
    atomic_write_json(path, fp)
