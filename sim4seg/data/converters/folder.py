"""``--source folder``: your own images and masks, listed in a CSV, converted without writing code.

Layout of ``--root DIR``:

- exactly one CSV directly in DIR, with a header: ``image``, ``mask``, ``label`` and optionally ``query``,
  ``split``, ``subset``. Paths are relative to DIR; images in any format the reader takes (PNG, JPEG, TIFF,
  16-bit, DICOM, NIfTI: sim4seg.data.readers), masks 0/255 of the image's size as displayed.
- ``DIR/subsets.json`` declaring the subset(s) the rows use unless they are built in (fields: data/README.md);
  the entry used is copied into ``OUT/subsets.json`` (an entry already there must be the same).

Per row: ``label`` is one or more diagnosis labels (or synonyms) separated by ``;``; an empty ``mask`` means no
finding (an all-background mask); an empty ``query`` gets one from the subset's templates
(``prompts.query_for``); an empty ``split`` is drawn by a seeded 70/10/20 split over those rows (``--seed``);
``subset`` defaults to the only subset of ``DIR/subsets.json``. One subset per run. Record ids are
``<subset>/<image path without extension>``. A bad row is one warning naming the CSV line (``--strict``: an error).
"""

from __future__ import annotations

import csv
import json
from functools import partial
from pathlib import Path

from sim4seg.data.converters.base import ConvertOptions, ConvertSummary, Item, Reporter
from sim4seg.data.converters.layout import normalise_label
from sim4seg.data.converters.run import run_converter
from sim4seg.data.converters.splits import seeded_split
from sim4seg.data.vocab import SPLITS, Subset, load_vocabulary
from sim4seg.errors import UserError
from sim4seg.jsonl import atomic_write_json

SOURCE = "folder"
COLUMNS = ("image", "mask", "label")
SHARES = {"train": 70, "val": 10, "test": 20}  # of rows without a split


def _the_csv(root: Path) -> Path:
    found = sorted(root.glob("*.csv"))
    if len(found) != 1:
        raise UserError(f"--root {root}: expected exactly one CSV (columns {', '.join(COLUMNS)}[, query, split, "
                        f"subset]) directly in it, found {len(found)}{': ' if found else ''}"
                        f"{', '.join(p.name for p in found)}")
    return found[0]


def _read_rows(path: Path) -> list[tuple[int, dict[str, str]]]:
    """(CSV line number, row with stripped cells) for every non-empty row."""
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        missing = [c for c in COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise UserError(f"{path}: the header lacks column(s) {', '.join(missing)} (needed: {', '.join(COLUMNS)}; "
                            "optional: query, split, subset)")
        rows = [(reader.line_num, {k: (v or "").strip() for k, v in r.items() if k}) for r in reader]
    return [(n, r) for n, r in rows if any(r.values())]


def _subset_name(rows: list[tuple[int, dict[str, str]]], declared: dict, csv_path: Path, vocab: dict) -> str:
    """The one subset of the run: the rows' ``subset`` cells, else the only entry of DIR/subsets.json."""
    names = {r.get("subset", "") for _, r in rows} - {""}
    if len(names) > 1:
        raise UserError(f"{csv_path}: rows name several subsets ({', '.join(sorted(names))}); convert one subset "
                        "per run (one folder and CSV each)")
    if not names:
        if len(declared) != 1:
            raise UserError(f"{csv_path}: no 'subset' given, and {csv_path.parent / 'subsets.json'} declares "
                            f"{len(declared)} subsets; add a 'subset' column or declare exactly one subset there")
        names = set(declared)
    (name,) = names
    if name not in vocab:
        raise UserError(f"{csv_path}: subset {name!r} is neither built in nor declared in "
                        f"{csv_path.parent / 'subsets.json'} (e.g. {{\"{name}\": {{\"modality\": \"CT\", \"labels\": "
                        '["lesion", "normal"]}}; fields: data/README.md)')
    return name


def _collect(csv_path: Path, rows: list[tuple[int, dict[str, str]]], subset: Subset, root: Path,
             opts: ConvertOptions, rep: Reporter) -> tuple[list[Item], int]:
    items: list[Item] = []
    unsplit: set[str] = set()
    for line, r in rows:
        where = f"{csv_path.name}:{line}"
        image = root / r["image"]
        if not r["image"] or not image.is_file():
            rep.problem(f"{where}: image {r['image']!r} not found under {root}")
            continue
        mask = root / r["mask"] if r["mask"] else None
        if mask is not None and not mask.is_file():
            rep.problem(f"{where}: mask {r['mask']!r} not found under {root}")
            continue
        raw = [x for x in (s.strip() for s in r["label"].split(";")) if x]
        labels = [normalise_label(subset, x) for x in raw]
        if not raw or None in labels:
            rep.problem(f"{where}: label {r['label']!r} is not one of {subset.name}'s labels "
                        f"({', '.join(subset.labels)}; several are separated by ';')")
            continue
        split = r.get("split", "").lower() or None
        if split is not None and split not in SPLITS:
            rep.problem(f"{where}: split {r['split']!r} is not one of {', '.join(SPLITS)} (or empty)")
            continue
        rel = Path(r["image"])
        name = (rel.parent / rel.name[: -len(".nii.gz")] if rel.name.lower().endswith(".nii.gz")
                else rel.with_suffix("")).as_posix()
        items.append(Item(name=name, image=image, diagnosis=list(dict.fromkeys(labels)), split=split,
                          mask_files=[mask] if mask else [], query=r.get("query") or None,
                          source={"csv": csv_path.name, "line": line, "image": r["image"], "mask": r["mask"]}))
        if split is None:
            unsplit.add(name)
    drawn = seeded_split(unsplit, SHARES, opts.seed, salt=f"{SOURCE}:{subset.name}") if unsplit else {}
    for it in items:
        it.split = it.split or drawn[it.name]
    return items, 0


def _copy_declaration(root: Path, out: Path, name: str) -> None:
    """Put DIR/subsets.json's entry for ``name`` into OUT/subsets.json, so OUT describes itself."""
    src = root / "subsets.json"
    declared = json.loads(src.read_text()) if src.exists() else {}
    if name not in declared:
        return
    dst = out / "subsets.json"
    have = json.loads(dst.read_text()) if dst.exists() else {}
    if name in have and have[name] != declared[name]:
        raise UserError(f"{dst}: already declares {name!r} differently from {src}; make them agree or convert into "
                        "another --out")
    if name not in have:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_json(dst, {**have, name: declared[name]})


def convert(root: str | Path, out: str | Path, opts: ConvertOptions | None = None) -> ConvertSummary:
    """Convert the CSV-listed images and masks of ``root`` into the dataset folder ``out`` (appending)."""
    root, out = Path(root), Path(out)
    if not root.is_dir():
        raise UserError(f"--root {root} is not a folder (your images, masks and their CSV)")
    csv_path = _the_csv(root)
    rows = _read_rows(csv_path)
    if not rows:
        raise UserError(f"{csv_path}: no rows below the header")
    vocab = load_vocabulary(root)  # validates DIR/subsets.json (unknown fields, overrides) in one line
    declared = json.loads((root / "subsets.json").read_text()) if (root / "subsets.json").exists() else {}
    name = _subset_name(rows, declared, csv_path, vocab)
    load_vocabulary(out)  # OUT/subsets.json must be valid before anything is added to it
    _copy_declaration(root, out, name)
    return run_converter(SOURCE, name, partial(_collect, csv_path, rows, vocab[name]), root, out, opts)
