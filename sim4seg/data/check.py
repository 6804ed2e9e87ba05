"""``sim4seg data check`` and ``sim4seg data stats``: validate a dataset folder, and print its Table 1.

The check reads every record and every file, and reports each problem on one line naming the record, the file
and the reason, so a broken conversion is found before a training run trips over it.
"""

from __future__ import annotations

import hashlib
import os
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from sim4seg.data.io import DEFAULT_MAX_PIXELS, exif_turn, image_size, load_image, load_mask
from sim4seg.data.schema import RECORDS, Record, RecordError, iter_records, resolve_path, validate_record
from sim4seg.data.vocab import M3DS_SUBSETS, MODALITIES, SPLITS, load_vocabulary


@dataclass(frozen=True)
class Problem:
    record: str  # record id, or "?" when the line could not be parsed
    file: str    # the file at fault, or "records.jsonl:N" for the record itself
    reason: str

    def line(self) -> str:
        return f"record {self.record!r}: {self.file}: {self.reason}"


@dataclass
class CheckReport:
    root: Path
    n_records: int = 0
    counts: dict[str, dict[str, int]] = field(default_factory=dict)  # subset -> split -> n
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def _reason(msg: str, *prefixes: str) -> str:
    """The reason part of a RecordError message (they start with the file or the record they name)."""
    for p in prefixes:
        if msg.startswith(p):
            return msg[len(p):]
    return msg


def _check_files(rec: Record, img_path: Path, masks: list[tuple[str, Path]], max_pixels: int,
                 ) -> tuple[list[Problem], str | None]:
    """Decode the image and each of ``masks`` ((record path, file): the mask and the targets' masks); the
    targets' masks must add up to the mask."""
    problems, digest, hw = [], None, None
    try:
        img = load_image(img_path, max_pixels)
        hw = img.shape[:2]
        # Hash of the decoded pixels: catches the same image stored twice even if re-encoded losslessly.
        digest = hashlib.blake2b(repr(img.shape).encode() + img.tobytes(), digest_size=16).hexdigest()
    except RecordError as e:
        problems.append(Problem(rec.id, rec.image, _reason(str(e), f"{img_path}: ")))
    decoded = []
    for rel, path in masks:
        try:
            decoded.append(load_mask(path, hw, max_pixels))
        except RecordError as e:
            problems.append(Problem(rec.id, rel, _exif_hint(img_path, path, hw, max_pixels)
                                    or _reason(str(e), f"{path}: ")))
    union_ok = not rec.targets or rec.mask is None or len(decoded) < len(masks) \
        or np.array_equal(decoded[0], np.logical_or.reduce(decoded[1:]))
    if not union_ok:
        problems.append(Problem(rec.id, rec.mask, f"mask is not the union of the {len(decoded) - 1} targets' masks "
                                                  "(the paper's single-mask setting reads 'mask')"))
    return problems, digest


def _exif_hint(img_path: Path, mask_path: Path, hw: tuple[int, int] | None, max_pixels: int) -> str | None:
    """When a mask fits the image as stored but not as displayed (an EXIF turn), say so."""
    turn = exif_turn(img_path, max_pixels) if hw is not None else None
    if turn is None:
        return None
    try:
        if image_size(mask_path, max_pixels) != (hw[1], hw[0]):
            return None
    except RecordError:
        return None
    return (f"mask is {hw[1]}x{hw[0]}, the size of its image as stored, but the image is read as displayed, "
            f"{hw[0]}x{hw[1]} (HxW), turned by its EXIF orientation {turn}: rotate the mask the same way, or "
            "re-save the image upright without the EXIF orientation (PIL.ImageOps.exif_transpose)")


def check_dataset(root: str | Path, max_pixels: int = DEFAULT_MAX_PIXELS, workers: int | None = None,
                  progress: bool | None = None) -> CheckReport:
    """Validate every record of ``root/records.jsonl`` and the files it names.

    Checks: the schema and vocabulary (``schema.validate_record``: subset, modality, split, labels, paths that stay
    inside ``root``), a modality matching the subset, a non-empty query, unique ids, image and mask decodable, the
    mask binary 0/255 and of the image's size, and no image content shared by records of different splits.
    """
    root = Path(root)
    vocab = load_vocabulary(root)
    report = CheckReport(root)
    seen: dict[str, str] = {}
    jobs: list[tuple[Record, Path, Path]] = []
    for full_where, rec in iter_records(root):
        where = f"{RECORDS}:{full_where.rsplit(':', 1)[1]}"
        if isinstance(rec, RecordError):
            report.problems.append(Problem("?", where, _reason(str(rec), f"{full_where}: ")))
            continue
        if rec.id in seen:
            report.problems.append(Problem(rec.id, where, f"duplicate id (first at {seen[rec.id]})"))
            continue
        seen[rec.id] = where
        report.n_records += 1
        report.counts.setdefault(rec.subset, dict.fromkeys(SPLITS, 0))
        report.counts[rec.subset][rec.split] = report.counts[rec.subset].get(rec.split, 0) + 1
        prefix = f"record {rec.id!r}: "
        schema_msg = None
        try:
            validate_record(rec, vocab, root)
        except RecordError as e:
            schema_msg = str(e)
            report.problems.append(Problem(rec.id, where, _reason(schema_msg, prefix)))
        if rec.subset in vocab and rec.modality != vocab[rec.subset].modality:
            report.problems.append(Problem(rec.id, where, f"modality {rec.modality!r} but subset {rec.subset} is "
                                                          f"{vocab[rec.subset].modality!r}"))
        if not isinstance(rec.query, str) or not rec.query.strip():
            report.problems.append(Problem(rec.id, where, "empty query"))
        files = [("image", rec.image)] + ([("mask", rec.mask)] if rec.mask is not None else [])
        files += [(f"targets[{j}].mask", t.get("mask") if isinstance(t, dict) else None)
                  for j, t in enumerate(rec.targets or [])]
        paths = []
        for key, rel in files:
            try:
                paths.append((rel, resolve_path(root, rel, rec.id, key)))
            except (RecordError, TypeError) as e:
                if str(e) != schema_msg:  # validate_record already said it
                    report.problems.append(Problem(rec.id, where, _reason(str(e), prefix)))
        if len(paths) == len(files):
            jobs.append((rec, paths[0][1], paths[1:]))

    workers = workers or min(8, os.cpu_count() or 1)
    by_hash: dict[str, list[Record]] = defaultdict(list)
    with ThreadPoolExecutor(workers) as pool:  # PIL decodes without the GIL: threads give real speed-up
        results = pool.map(lambda j: _check_files(*j, max_pixels), jobs)
        for (rec, _, _), (problems, digest) in zip(
                jobs, tqdm(results, total=len(jobs), desc="check", unit="rec", disable=None if progress is None else not progress),
                strict=True):
            report.problems.extend(problems)
            if digest:
                by_hash[digest].append(rec)
    for recs in by_hash.values():
        first = recs[0]
        for r in recs[1:]:
            if r.split != first.split:
                report.problems.append(Problem(r.id, r.image, f"same image content as record {first.id!r} "
                                                             f"({first.split}) but in split {r.split!r}"))
    return report


def _subset_order(names: list[str]) -> list[str]:
    known = [s for s in M3DS_SUBSETS if s in names]
    return known + sorted(n for n in names if n not in M3DS_SUBSETS)


def format_counts(report: CheckReport) -> str:
    rows = [("subset", *SPLITS, "total")]
    totals = dict.fromkeys(SPLITS, 0)
    for s in _subset_order(list(report.counts)):
        c = report.counts[s]
        rows.append((s, *(str(c.get(k, 0)) for k in SPLITS), str(sum(c.values()))))
        for k in SPLITS:
            totals[k] += c.get(k, 0)
    rows.append(("total", *(str(totals[k]) for k in SPLITS), str(sum(totals.values()))))
    return _table(rows)


def print_report(report: CheckReport) -> None:
    print(format_counts(report))
    for p in report.problems:
        print(f"problem: {p.line()}")
    if report.ok:
        print(f"{report.root}: {report.n_records} record(s), no problems")
    else:
        print(f"{report.root}: {report.n_records} record(s), {len(report.problems)} problem(s)")


# ----------------------------------------------------------------------------------------------------------------
# stats: the paper's Table 1


MODALITY_HEADERS = {"x-ray": "X-ray", "dermoscopy": "Dermoscopy", "endoscopy": "Endoscopy",
                    "ultrasound": "Ultrasound", "fundus": "Fundus"}


@dataclass
class Stats:
    sizes: dict[str, dict[str, int]]       # subset -> split -> n positives (the paper's Table 1)
    modalities: dict[str, set[str]]        # subset -> modalities of its records
    skipped_lines: int = 0
    negatives: dict[str, dict[str, int]] = field(default_factory=dict)  # subset -> split -> n negatives
    several: dict[str, int] = field(default_factory=dict)  # subset -> n records with several targets


def dataset_stats(root: str | Path) -> Stats:
    """Split sizes and modalities per subset (unparseable lines are counted, not fatal: ``data check`` says why)."""
    stats = Stats({}, {})
    seen = set()
    for _, rec in iter_records(root):
        if isinstance(rec, RecordError):
            stats.skipped_lines += 1
            continue
        if rec.id in seen:
            continue
        seen.add(rec.id)
        for table in (stats.sizes, stats.negatives):
            table.setdefault(rec.subset, dict.fromkeys(SPLITS, 0))
        count = stats.negatives if rec.is_negative else stats.sizes
        count[rec.subset][rec.split] = count[rec.subset].get(rec.split, 0) + 1
        stats.several[rec.subset] = stats.several.get(rec.subset, 0) + bool(rec.targets)
        stats.modalities.setdefault(rec.subset, set()).add(rec.modality)
    return stats


def format_stats(stats: Stats) -> str:
    """Table 1 layout: one row per subset, a tick per modality, train/val/test sizes, and a Total row.

    Train/Val/Test count the positives (Table 1); where there are negatives, three columns count them per split,
    and where records carry several targets, a column counts those records.
    """
    with_neg = any(n for per in stats.negatives.values() for n in per.values())
    with_several = any(stats.several.values())
    extra = [f"{k.capitalize()} neg" for k in SPLITS] * with_neg + ["Several"] * with_several
    rows = [("Dataset", *MODALITY_HEADERS.values(), "Train", "Val", "Test", *extra)]
    per_modality = dict.fromkeys(MODALITIES, 0)
    totals = [0] * (len(SPLITS) + len(extra))
    for s in _subset_order(list(stats.sizes)):
        mods = stats.modalities.get(s, set())
        for m in mods & set(MODALITIES):
            per_modality[m] += 1
        neg = stats.negatives.get(s, {})
        counts = [stats.sizes[s].get(k, 0) for k in SPLITS] + [neg.get(k, 0) for k in SPLITS] * with_neg
        counts += [stats.several.get(s, 0)] * with_several
        rows.append((s, *("✓" if m in mods else "" for m in MODALITIES), *map(str, counts)))
        totals = [a + b for a, b in zip(totals, counts, strict=True)]
    rows.append(("Total", *(str(per_modality[m]) for m in MODALITIES), *map(str, totals)))
    text = _table(rows)
    if stats.skipped_lines:
        text += f"\n({stats.skipped_lines} unparseable line(s) not counted; run `sim4seg data check`)"
    return text


def _table(rows: list[tuple[str, ...]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = []
    for r in rows:
        cells = [r[0].ljust(widths[0])] + [c.rjust(w) if c != "✓" else c.center(w) for c, w in zip(r[1:], widths[1:],
                                                                                                    strict=True)]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)
