"""Running a converter: decode and check each item, write its image and mask, append records, resume.

A converter module only knows its native layout: its ``collect`` function lists :class:`Item` s (image path,
split, diagnosis, where the mask comes from). :func:`run_converter` does the rest the same way for every source.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from collections.abc import Callable
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


def convert_item(item: Item, subset: Subset, out: Path) -> Record:
    """Decode and check one item, write its image and mask under ``out``, return its record."""
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
    mask = build_mask(item, hw)
    # Keep the original bytes of JPEG and PNG files (no re-encoding loss); anything else becomes a PNG.
    ext = {"JPEG": ".jpg", "PNG": ".png"}.get(fmt)
    rel_img = f"images/{subset.name}/{item.name}{ext or '.png'}"
    rel_mask = f"masks/{subset.name}/{item.name}.png"
    if ext:
        _atomic_write(out / rel_img, lambda p: shutil.copyfile(item.image, p))
    else:
        _atomic_write(out / rel_img, lambda p: Image.fromarray(img).save(p, format="PNG"))
    _atomic_write(out / rel_mask, lambda p: Image.fromarray(mask.astype(np.uint8) * 255, "L").save(p, format="PNG"))
    rid = f"{subset.name}/{item.name}"
    return Record(id=rid, subset=subset.name, modality=subset.modality, split=item.split, image=rel_img,
                  mask=rel_mask, query=item.query or query_for(subset, rid), diagnosis=list(item.diagnosis), cot=None,
                  source=item.source)


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
                rec = convert_item(item, subset, out)
            except ConversionProblem as e:
                rep.problem(str(e))
                continue
            pending.append(rec)
            summary.written[rec.split] += 1
            if len(pending) >= FLUSH_EVERY:
                append_records(out, pending)
                pending = []
    finally:
        if pending:
            append_records(out, pending)
    summary.problems, summary.missing = rep.problems, rep.missing
    return summary
