"""What every converter shares: options, native items, the summary line, and the warnings policy."""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from sim4seg.data.vocab import SPLITS
from sim4seg.errors import UserError


class ConversionProblem(Exception):
    """One sample cannot be converted; ``str()`` is one line naming the file and the reason."""


@dataclass(frozen=True)
class ConvertOptions:
    seed: int = 0
    strict: bool = False
    negatives: bool = False  # also convert the images without a finding (records with "mask": null)
    per_finding_targets: bool = False  # images with several findings also get "targets" (one mask per finding)


@dataclass
class Finding:
    """One annotated finding of an item (a ChestX-Det polygon, a BUSI mask file, a YOLO shape), same
    coordinate conventions as :class:`Item`."""

    label: str
    mask_files: list[Path] = field(default_factory=list)
    polygons: list[list[float]] = field(default_factory=list)
    boxes: list[tuple[float, float, float, float]] = field(default_factory=list)


@dataclass
class Item:
    """One native sample. The mask is the union of ``mask_files``, ``polygons`` and ``boxes``.

    ``name`` is the record id without the subset prefix and the output path under ``images/<Subset>/`` without
    extension. Polygons are flat ``[x0, y0, x1, y1, ...]`` and boxes ``(x0, y0, x1, y1)``, both in COCO pixel
    coordinates (pixel ``i`` spans ``[i, i+1)``), or in fractions of the image size when ``normalised`` (YOLO).
    A ``negative`` item (no finding) has none of them and the diagnosis ``["normal"]``; ``findings`` lists the
    annotated findings one by one where the source has several (their union is the mask).
    """

    name: str
    image: Path
    diagnosis: list[str]
    source: dict
    split: str | None = None
    mask_files: list[Path] = field(default_factory=list)
    polygons: list[list[float]] = field(default_factory=list)
    boxes: list[tuple[float, float, float, float]] = field(default_factory=list)
    normalised: bool = False
    query: str | None = None  # the record's query; None: one from prompts.query_for (source "folder" has its own)
    negative: bool = False
    findings: list[Finding] = field(default_factory=list)


@dataclass
class ConvertSummary:
    source: str
    subset: str
    out: Path
    written: dict[str, int] = field(default_factory=lambda: {s: 0 for s in SPLITS})
    negatives: int = 0  # of the records written
    with_targets: int = 0  # of the records written
    already_present: int = 0
    problems: int = 0
    missing: int = 0
    left_out: int = 0

    @property
    def n_written(self) -> int:
        return sum(self.written.values())

    def empty_reason(self) -> str | None:
        """Why nothing was converted, or None when records were written or were all there already."""
        if self.n_written or self.already_present:
            return None
        why = []
        if self.missing:
            why.append(f"the {self.missing} sample(s) its annotation or label files list have no image or mask "
                       "file under --root (partial download? e.g. ChestX-Det's JSON without the images of "
                       "train_data.zip/test_data.zip: unpack them under --root)")
        if self.problems:
            why.append(f"{self.problems} sample(s) were skipped as damaged (see the warnings above)")
        if self.left_out:
            why.append(f"{self.left_out} were left out to match Table 1")
        return "; ".join(why) or "no sample was found"

    def line(self) -> str:
        per = ", ".join(f"{s} {n}" for s, n in self.written.items())
        parts = [f"{self.source} -> {self.out}: {self.n_written} {self.subset} record(s) written ({per})"]
        parts += [f"{n} of them {what}" for n, what in ((self.negatives, "negatives (no finding)"),
                                                        (self.with_targets, "with per-finding targets")) if n]
        parts.append(f"{self.already_present} already present")
        if self.problems:
            parts.append(f"{self.problems} skipped with problems (see warnings)")
        if self.missing:
            parts.append(f"{self.missing} listed but missing")
        if self.left_out:
            parts.append(f"{self.left_out} left out to match Table 1")
        return "; ".join(parts)


class Reporter:
    """Warnings policy: one line per problem on stderr; with ``strict`` the first problem stops the run.

    Missing files (a partial download) are not problems: they are summarised in one line and never stop a run.
    """

    def __init__(self, source: str, strict: bool) -> None:
        self.source = source
        self.strict = strict
        self.problems = 0
        self.missing = 0

    def warn(self, msg: str) -> None:
        tqdm.write(f"warning: {self.source}: {msg}", file=sys.stderr)

    def problem(self, msg: str) -> None:
        if self.strict:
            raise UserError(f"{self.source}: {msg} (stopped by --strict; drop it to skip and count such files)")
        self.problems += 1
        self.warn(msg)

    def missing_files(self, names: list[str], listed_in: str, root: Path, found: int) -> None:
        if not names:
            return
        self.missing += len(names)
        eg = ", ".join(sorted(names)[:3])
        self.warn(f"{len(names)} file(s) listed in {listed_in} are missing under {root} (partial download?), "
                  f"e.g. {eg}; converting the {found} found")


# collect(root, options, reporter) -> (items with their splits set, number of official samples left out)
Collect = Callable[[Path, ConvertOptions, Reporter], "tuple[list[Item], int]"]
