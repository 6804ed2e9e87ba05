"""Running a converter: decode and check each item, write its image and mask, append records, resume.

A converter module only knows its native layout: its ``collect`` function lists :class:`Item` s (image path,
split, diagnosis, where the mask comes from, each finding, or no finding). :func:`run_converter` does the rest
the same way for every source.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from sim4seg.data.converters.base import Collect, ConversionProblem, ConvertOptions, ConvertSummary, Item, Reporter
from sim4seg.data.converters.masks import build_mask
from sim4seg.data.io import load_image
from sim4seg.data.prompts import query_for
from sim4seg.data.schema import RECORDS, Record, RecordError, append_records, iter_records
from sim4seg.data.vocab import Subset, load_vocabulary
from sim4seg.errors import UserError

FLUSH_EVERY = 50  # records per durable append; a crash loses at most this many (their files are redone on rerun)


def existing_ids(out: Path) -> set[str]:
    """Ids already in ``out/records.jsonl`` (unparseable lines are left for ``data check`` to report)."""
    if not (out / RECORDS).exists():
        return set()
    return {r.id for _, r in iter_records(out) if not isinstance(r, RecordError)}


def _atomic_write(dst: Path, write: Callable[[Path], None]) -> None:
    # Write beside the target then rename, so an interrupted run never leaves a half-written file in place.
    dst.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dst.parent, prefix=".tmp-", suffix=dst.suffix)
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, dst)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _finding_masks(item: Item, hw: tuple[int, int]) -> list[tuple[str, np.ndarray]]:
    """(label, mask) of each non-empty finding, left to right in the image (centroid column, then row), the
    order the answer names them in."""
    found = []
    for f in item.findings:
        m = build_mask(replace(item, mask_files=f.mask_files, polygons=f.polygons, boxes=f.boxes), hw)
        if m.any():
            rows, cols = np.nonzero(m)
            found.append((float(cols.mean()), float(rows.mean()), f.label, m))
    return [(label, m) for _, _, label, m in sorted(found, key=lambda x: x[:2])]


def convert_item(item: Item, subset: Subset, out: Path, per_finding_targets: bool = False) -> Record:
    """Decode and check one item, write its image and masks under ``out``, return its record.

    A negative gets no mask file (``"mask": null``). With ``per_finding_targets``, an item with two or more
    non-empty findings also gets one mask per finding (``masks/<Subset>/<name>_<j>.png``) in ``targets``.
    """
    try:
        img = load_image(item.image)
    except RecordError as e:
        raise ConversionProblem(str(e)) from None
    try:
        with Image.open(item.image) as im:
            fmt = im.format
    except OSError:  # DICOM, NIfTI: decoded by sim4seg.data.readers, written as PNG
        fmt = None
    hw = img.shape[:2]
    rel_mask, targets = None, None
    masks: list[tuple[str, np.ndarray]] = []  # (path, mask), all built before anything is written
    if not item.negative:
        rel_mask = f"masks/{subset.name}/{item.name}.png"
        masks.append((rel_mask, build_mask(item, hw)))
        findings = _finding_masks(item, hw) if per_finding_targets and len(item.findings) > 1 else []
        if len(findings) > 1:
            targets = [{"label": label, "mask": f"masks/{subset.name}/{item.name}_{j}.png"}
                       for j, (label, _) in enumerate(findings)]
            masks += [(t["mask"], m) for t, (_, m) in zip(targets, findings, strict=True)]
    # Keep the original bytes of JPEG and PNG files (no re-encoding loss); anything else becomes a PNG.
    ext = {"JPEG": ".jpg", "PNG": ".png"}.get(fmt)
    rel_img = f"images/{subset.name}/{item.name}{ext or '.png'}"
    if ext:
        _atomic_write(out / rel_img, lambda p: shutil.copyfile(item.image, p))
    else:
        _atomic_write(out / rel_img, lambda p: Image.fromarray(img).save(p, format="PNG"))
    for rel, m in masks:
        _atomic_write(out / rel, lambda p, m=m: Image.fromarray(m.astype(np.uint8) * 255, "L").save(p, format="PNG"))
    rid = f"{subset.name}/{item.name}"
    return Record(id=rid, subset=subset.name, modality=subset.modality, split=item.split, image=rel_img,
                  mask=rel_mask, query=item.query or query_for(subset, rid), diagnosis=list(item.diagnosis), cot=None,
                  source=item.source, targets=targets)


def run_converter(source: str, subset_name: str, collect: Collect, root: str | Path, out: str | Path,
                  opts: ConvertOptions | None = None) -> ConvertSummary:
    """Convert one source into ``out`` (appending; ids already there are skipped, so a crashed run resumes).

    ``collect(root, opts, reporter)`` returns the items with their splits set, and how many official samples
    were left out to match Table 1.
    """
    opts = opts or ConvertOptions()
    root, out = Path(root), Path(out)
    if not root.is_dir():
        raise UserError(f"--root {root} is not a folder (the unpacked {source} download)")
    subset = load_vocabulary(out)[subset_name]  # built-in, or declared in out/subsets.json (source "folder")
    rep = Reporter(source, opts.strict)
    items, left_out = collect(root, opts, rep)
    if not items and not rep.missing:
        raise UserError(f"no {subset_name} samples found under {root}; see data/README.md for the layout {source} "
                        "expects")
    if opts.negatives and not any(it.negative for it in items):
        rep.warn("--negatives: no image without a finding here (the source has none, or none was found)")
    if opts.per_finding_targets and not any(len(it.findings) > 1 for it in items):
        rep.warn("--per-finding-targets: no image with several annotated findings here")
    summary = ConvertSummary(source, subset_name, out, left_out=left_out)
    out.mkdir(parents=True, exist_ok=True)
    done = existing_ids(out)
    names = set()
    pending: list[Record] = []
    try:
        for item in tqdm(items, desc=f"convert {source}", unit="img", disable=None, file=sys.stderr):
            if item.name in names:  # two native files mapping to one id would overwrite each other
                rep.problem(f"{item.image}: duplicate sample name {item.name!r}; skipped")
                continue
            names.add(item.name)
            if f"{subset_name}/{item.name}" in done:
                summary.already_present += 1
                continue
            try:
                rec = convert_item(item, subset, out, opts.per_finding_targets)
            except ConversionProblem as e:
                rep.problem(str(e))
                continue
            pending.append(rec)
            summary.written[rec.split] += 1
            summary.negatives += rec.is_negative
            summary.with_targets += rec.targets is not None
            if len(pending) >= FLUSH_EVERY:
                append_records(out, pending)
                pending = []
    finally:
        if pending:
            append_records(out, pending)
    summary.problems, summary.missing = rep.problems, rep.missing
    return summary
