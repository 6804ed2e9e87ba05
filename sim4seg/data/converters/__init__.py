"""Converters from each M3DS source's native download layout to the record schema (``sim4seg data convert``).

Each takes ``(root, out, opts)`` and appends to ``out``; see :mod:`sim4seg.data.converters.common`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from sim4seg.data.converters import (
    bfd,
    bone_fracture,
    busi,
    chestx_det,
    fives,
    fracatlas,
    isbi,
    isic,
    kvasir,
    tn3k,
)
from sim4seg.data.converters.common import ConvertOptions, ConvertSummary

Converter = Callable[[str | Path, str | Path, ConvertOptions | None], ConvertSummary]

CONVERTERS: dict[str, Converter] = {
    m.SOURCE: m.convert
    for m in (fracatlas, bone_fracture, bfd, isbi, isic, kvasir, busi, tn3k, chestx_det, fives)
}
# source name -> M3DS subset name
SUBSET_OF: dict[str, str] = {
    m.SOURCE: m.SUBSET
    for m in (fracatlas, bone_fracture, bfd, isbi, isic, kvasir, busi, tn3k, chestx_det, fives)
}

__all__ = ["CONVERTERS", "SUBSET_OF", "ConvertOptions", "ConvertSummary"]
