"""Converters from each M3DS source's native download layout to the record schema (``sim4seg data convert``).

A source module knows only its layout: ``SOURCE`` (the ``--source`` name), ``SUBSET`` (the M3DS subset) and
``collect(root, opts, reporter)``, which lists the native items. Everything else (decoding, masks, writing,
resuming) is :func:`sim4seg.data.converters.run.run_converter`, the same for all: :data:`CONVERTERS` binds it
to each source. Shared pieces: ``base`` (options, items, summary, warnings), ``layout`` (finding native files),
``splits`` (seeded splits), ``masks``, ``yolo`` and ``isic_style`` (two layouts used by two sources each).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from pathlib import Path

from sim4seg.data.converters import (
    bfd,
    bone_fracture,
    busi,
    chestx_det,
    fives,
    folder,
    fracatlas,
    isbi,
    isic,
    kvasir,
    tn3k,
)
from sim4seg.data.converters.base import ConvertOptions, ConvertSummary
from sim4seg.data.converters.run import run_converter

# (root, out, opts=None) -> summary; appends the source to the dataset folder ``out``.
Converter = Callable[[str | Path, str | Path, ConvertOptions | None], ConvertSummary]
SOURCES = (fracatlas, bone_fracture, bfd, isbi, isic, kvasir, busi, tn3k, chestx_det, fives)

CONVERTERS: dict[str, Converter] = {m.SOURCE: partial(run_converter, m.SOURCE, m.SUBSET, m.collect) for m in SOURCES}
CONVERTERS[folder.SOURCE] = folder.convert  # your own data: its subset comes from its CSV and subsets.json
SUBSET_OF: dict[str, str] = {m.SOURCE: m.SUBSET for m in SOURCES}  # source name -> M3DS subset name

__all__ = ["CONVERTERS", "SUBSET_OF", "ConvertOptions", "ConvertSummary"]
