"""Finding things in a native download: folders and files by name, image listings, CSV rows, labels."""

from __future__ import annotations

import csv
import re
from pathlib import Path

from sim4seg.data.converters.base import ConversionProblem
from sim4seg.data.vocab import Subset
from sim4seg.errors import UserError

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


def normalise_label(subset: Subset, name: str) -> str | None:
    """Map a native class name to the subset's canonical label (vocab labels and synonyms); None if unknown."""
    key = re.sub(r"[\s_]+", " ", str(name).strip().lower())
    if key in subset.labels:
        return key
    return subset.synonyms.get(key)


def _find(root: Path, names: tuple[str, ...], depth: int, want_dir: bool) -> Path | None:
    """Breadth-first: the first folder (``want_dir``) or file named one of ``names`` (case-insensitive) in
    ``root`` or up to ``depth`` folder levels below it, in sorted order per level."""
    wanted = {n.lower() for n in names}
    level = [root]
    for _ in range(depth + 1):
        nxt = []
        for d in level:
            try:
                entries = sorted(d.iterdir())
            except OSError:
                continue
            for p in entries:
                if p.name.lower() in wanted and (p.is_dir() if want_dir else p.is_file()):
                    return p
            nxt.extend(p for p in entries if p.is_dir())
        level = nxt
    return None


def find_dir(root: Path, *names: str, depth: int = 2) -> Path | None:
    """A folder named one of ``names`` (case-insensitive) in ``root`` or up to ``depth`` levels below it.

    Archives often unpack into an extra top folder, and names differ in case ("Ground truth"/"Ground Truth").
    """
    return _find(root, names, depth, want_dir=True)


def find_file(root: Path, *names: str, depth: int = 2) -> Path | None:
    """A file named one of ``names`` (case-insensitive) in ``root`` or up to ``depth`` folder levels below."""
    return _find(root, names, depth, want_dir=False)


def list_images(folder: Path) -> dict[str, Path]:
    """``{stem: path}`` of the image files directly in ``folder`` (empty if it does not exist)."""
    if folder is None or not folder.is_dir():
        return {}
    return {p.stem: p for p in sorted(folder.iterdir()) if p.is_file() and p.suffix.lower() in IMAGE_EXTS}


def read_csv_rows(path: Path) -> list[list[str]]:
    """Non-blank CSV rows, BOM stripped, cells stripped."""
    with open(path, newline="", encoding="utf-8-sig") as f:
        return [[c.strip() for c in row] for row in csv.reader(f) if any(c.strip() for c in row)]


def require(path: Path | None, what: str, root: Path) -> Path:
    if path is None or not path.exists():
        raise UserError(f"{what} not found under {root}; point --root at the folder of the official download "
                        "(see data/README.md for the expected layout)")
    return path


def binary_flag(value: str, where: str) -> bool:
    """A 0/1 CSV cell ("0", "1", "0.0", "1.0") as a bool."""
    try:
        v = float(value)
    except ValueError:
        raise ConversionProblem(f"{where}: expected 0 or 1, got {value!r}") from None
    if v not in (0.0, 1.0):
        raise ConversionProblem(f"{where}: expected 0 or 1, got {value!r}")
    return v == 1.0
