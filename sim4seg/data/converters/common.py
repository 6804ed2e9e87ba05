"""Shared machinery for the M3DS converters: items, masks, seeded splits, resumable writing, warnings.

A converter module only knows its native layout: its ``collect`` function lists :class:`Item` s (image path,
split, diagnosis, where the mask comes from). :func:`run_converter` does the rest the same way for every source:
decode and check, rasterise or read the mask, copy the image, append the record, skip ids already converted.
"""

from __future__ import annotations

import csv
import os
import random
import re
import shutil
import sys
import tempfile
import warnings
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from PIL import Image
from pycocotools import mask as coco_mask
from tqdm import tqdm

from sim4seg.data.io import load_image
from sim4seg.data.prompts import query_for
from sim4seg.data.schema import RECORDS, Record, RecordError, append_records, iter_records
from sim4seg.data.vocab import M3DS_SUBSETS, SPLITS, Subset
from sim4seg.errors import UserError

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
LEFT_OUT = "_left_out"  # pseudo-split of a seeded split: in the official set but not in the paper's Table 1
FLUSH_EVERY = 50  # records per durable append; a crash loses at most this many (their files are redone on rerun)


class ConversionProblem(Exception):
    """One sample cannot be converted; ``str()`` is one line naming the file and the reason."""


@dataclass(frozen=True)
class ConvertOptions:
    seed: int = 0
    strict: bool = False
    include_normal: bool = False  # BUSI only: keep the 'normal' class (all-empty masks)


@dataclass
class Item:
    """One native sample. The mask is the union of ``mask_files``, ``polygons`` and ``boxes``.

    ``name`` is the record id without the subset prefix and the output path under ``images/<Subset>/`` without
    extension. Polygons are flat ``[x0, y0, x1, y1, ...]`` and boxes ``(x0, y0, x1, y1)``, both in COCO pixel
    coordinates (pixel ``i`` spans ``[i, i+1)``), or in fractions of the image size when ``normalised`` (YOLO).
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


@dataclass
class ConvertSummary:
    source: str
    subset: str
    out: Path
    written: dict[str, int] = field(default_factory=lambda: {s: 0 for s in SPLITS})
    already_present: int = 0
    problems: int = 0
    missing: int = 0
    left_out: int = 0

    @property
    def n_written(self) -> int:
        return sum(self.written.values())

    def line(self) -> str:
        per = ", ".join(f"{s} {n}" for s, n in self.written.items())
        parts = [f"{self.source} -> {self.out}: {self.n_written} {self.subset} record(s) written ({per})",
                 f"{self.already_present} already present"]
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


# ----------------------------------------------------------------------------------------------------------------
# Splits


def seeded_split(ids: Iterable[str], counts: Mapping[str, int], seed: int, *, total: int | None = None,
                 salt: str = "") -> dict[str, str]:
    """Assign ids to splits by a deterministic seeded shuffle.

    ``counts`` are the Table 1 sizes for the complete official set of ``total`` ids (default: their sum; when
    ``total`` is larger, the rest go to :data:`LEFT_OUT`). With exactly ``total`` ids the counts are met exactly;
    with any other number they are scaled proportionally (largest remainder). Ids are sorted before shuffling, so
    the result does not depend on the order files were listed in.
    """
    ids = sorted(set(ids))
    parts = dict(counts)
    full = sum(parts.values()) if total is None else total
    if full < sum(parts.values()):
        raise ValueError(f"total {full} is smaller than the split counts {dict(counts)}")
    if full > sum(parts.values()):
        parts[LEFT_OUT] = full - sum(counts.values())
    sizes = parts if len(ids) == full else _proportional(len(ids), parts)
    rng = random.Random(f"sim4seg-split:{salt}:{seed}")
    rng.shuffle(ids)
    out: dict[str, str] = {}
    start = 0
    for split, n in sizes.items():
        for i in ids[start:start + n]:
            out[i] = split
        start += n
    return out


def _proportional(n: int, parts: Mapping[str, int]) -> dict[str, int]:
    full = sum(parts.values())
    quota = {k: n * v / full for k, v in parts.items()}
    sizes = {k: int(q) for k, q in quota.items()}
    # Hamilton's method; ties go to the earlier part (train before val before test).
    order = sorted(parts, key=lambda k: -(quota[k] - sizes[k]))
    for k in order[: n - sum(sizes.values())]:
        sizes[k] += 1
    return sizes


def apply_split(items: list[Item], assignment: Mapping[str, str], key: Callable[[Item], str] = lambda it: it.name,
                ) -> tuple[list[Item], int]:
    """Set each item's split from ``assignment`` (by ``key``); drop items left out. Returns (kept, n left out)."""
    kept, left = [], 0
    for it in items:
        split = assignment[key(it)]
        if split == LEFT_OUT:
            left += 1
            continue
        it.split = split
        kept.append(it)
    return kept, left


# ----------------------------------------------------------------------------------------------------------------
# Labels and native files


def normalise_label(subset: Subset, name: str) -> str | None:
    """Map a native class name to the subset's canonical label (vocab labels and synonyms); None if unknown."""
    key = re.sub(r"[\s_]+", " ", str(name).strip().lower())
    if key in subset.labels:
        return key
    return subset.synonyms.get(key)


def find_dir(root: Path, *names: str, depth: int = 2) -> Path | None:
    """A folder named one of ``names`` (case-insensitive) in ``root`` or up to ``depth`` levels below it.

    Archives often unpack into an extra top folder, and names differ in case ("Ground truth"/"Ground Truth").
    """
    wanted = {n.lower() for n in names}
    level = [root]
    for _ in range(depth + 1):
        nxt = []
        for d in level:
            try:
                subs = sorted(p for p in d.iterdir() if p.is_dir())
            except OSError:
                continue
            for p in subs:
                if p.name.lower() in wanted:
                    return p
            nxt.extend(subs)
        level = nxt
    return None


def find_file(root: Path, *names: str, depth: int = 2) -> Path | None:
    """A file named one of ``names`` (case-insensitive) in ``root`` or up to ``depth`` folder levels below."""
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
                if p.is_file() and p.name.lower() in wanted:
                    return p
                if p.is_dir():
                    nxt.append(p)
        level = nxt
    return None


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


# ----------------------------------------------------------------------------------------------------------------
# YOLO labels (Roboflow "bone fracture" and Bone Fracture Detection)


@dataclass
class YoloShape:
    cls: int
    box: tuple[float, float, float, float] | None = None  # normalised (x0, y0, x1, y1)
    polygon: list[float] | None = None  # normalised flat x, y


def parse_yolo_label(path: Path) -> list[YoloShape]:
    """Parse a YOLO txt: ``cls cx cy w h`` (detection) or ``cls x1 y1 x2 y2 ...`` (segmentation polygon)."""
    shapes = []
    for i, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        tok = line.split()
        if not tok:
            continue
        try:
            cls, vals = int(float(tok[0])), [float(t) for t in tok[1:]]
        except ValueError:
            raise ConversionProblem(f"{path}:{i}: not a YOLO label line ({line.strip()[:40]!r})") from None
        if not all(np.isfinite(vals)):
            raise ConversionProblem(f"{path}:{i}: non-finite coordinate")
        if len(vals) == 4:
            cx, cy, w, h = vals
            shapes.append(YoloShape(cls, box=(cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2)))
        elif len(vals) >= 6 and len(vals) % 2 == 0:
            shapes.append(YoloShape(cls, polygon=vals))
        else:
            raise ConversionProblem(f"{path}:{i}: {len(vals)} coordinates; expected 4 (box) or an even number >= 6 "
                                    "(polygon)")
    return shapes


def yolo_class_names(data_yaml: Path) -> list[str]:
    """Class names from a Roboflow/Ultralytics ``data.yaml`` (``names`` as a list or an ``{id: name}`` map)."""
    import yaml

    try:
        d = yaml.safe_load(data_yaml.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise UserError(f"{data_yaml}: not valid YAML ({str(e).splitlines()[0]})") from None
    names = (d or {}).get("names")
    if isinstance(names, dict):
        names = [names[k] for k in sorted(names, key=int)]
    if not isinstance(names, list) or not names:
        raise UserError(f"{data_yaml}: no 'names' list of classes")
    return [str(n) for n in names]


YOLO_SPLIT_DIRS = {"train": "train", "valid": "val", "val": "val", "test": "test"}


def collect_yolo(root: Path, rep: Reporter, label_of: Callable[[int, Path], str | None]) -> list[Item]:
    """Items of a YOLO export: ``{train,valid|val,test}/{images,labels}``; the folder is the split.

    Images whose label file is missing or empty have no finding and are left out (M3DS keeps positives only).
    ``label_of(cls, label_file)`` gives the canonical diagnosis of a class id, or None to reject it.
    """
    items: list[Item] = []
    seen_split_dir = False
    for folder, split in YOLO_SPLIT_DIRS.items():
        img_dir, lab_dir = root / folder / "images", root / folder / "labels"
        if not img_dir.is_dir() and not lab_dir.is_dir():
            continue
        seen_split_dir = True
        images = list_images(img_dir)
        labels = {p.stem: p for p in sorted(lab_dir.glob("*.txt"))} if lab_dir.is_dir() else {}
        missing = []
        for stem, lab in labels.items():
            try:
                shapes = parse_yolo_label(lab)
            except ConversionProblem as e:
                rep.problem(str(e))
                continue
            if not shapes:
                continue  # a negative image: no fracture, not part of M3DS
            if stem not in images:
                missing.append(f"{folder}/images/{stem}.*")
                continue
            diagnosis = set()
            for s in shapes:
                lbl = label_of(s.cls, lab)
                if lbl is None:
                    break
                diagnosis.add(lbl)
            else:
                img = images[stem]
                items.append(Item(
                    name=f"{folder}/{stem}", image=img, split=split, diagnosis=sorted(diagnosis),
                    polygons=[s.polygon for s in shapes if s.polygon], boxes=[s.box for s in shapes if s.box],
                    normalised=True,
                    source={"image": f"{folder}/images/{img.name}", "label": f"{folder}/labels/{lab.name}",
                            "split": folder, "classes": sorted({s.cls for s in shapes})}))
        rep.missing_files(missing, f"{folder}/labels", root, len(images))
    if not seen_split_dir:
        raise UserError(f"no train/valid/test folders with images/ and labels/ under {root} (a YOLO export)")
    return items


# ----------------------------------------------------------------------------------------------------------------
# ISIC-style layout (ISBI 2016 and ISIC 2017): <Part1 data dir>/ISIC_x.jpg, <Part1 GT dir>/ISIC_x_segmentation.png,
# <Part3 csv> with the diagnosis of each image id.


@dataclass
class IsicPart:
    data_dirs: tuple[str, ...]   # accepted folder names of the images
    mask_dirs: tuple[str, ...]   # accepted folder names of the masks
    csv_names: tuple[str, ...]   # accepted names of the Part 3 label CSV
    native_split: str            # "train", "val" or "test" of the official release (kept in source)


def collect_isic_style(root: Path, parts: list[IsicPart], rep: Reporter, subset: Subset,
                       labels_of_row: Callable[[dict[str, str], Path], str],
                       ) -> dict[str, tuple[list[Item], list[str]]]:
    """Items of each official part found, and all image ids its Part 3 label CSV lists.

    Returns ``{native_split: (items, listed_ids)}``; seeded splits are drawn over ``listed_ids`` so that a partial
    download assigns each image the split it gets from the complete one.

    ``labels_of_row(row, csv_path)`` maps a CSV row (header names lower-cased; a headerless CSV gets
    ``image_id``/``label``) to a canonical label or raises :class:`ConversionProblem`.
    """
    out: dict[str, tuple[list[Item], list[str]]] = {}
    for part in parts:
        csv_path = next((p for n in part.csv_names if (p := find_file(root, n)) is not None), None)
        if csv_path is None:
            continue
        data_dir = find_dir(root, *part.data_dirs)
        mask_dir = find_dir(root, *part.mask_dirs)
        images = {k: v for k, v in list_images(data_dir).items() if not k.endswith("_superpixels")}
        masks = {p.stem.lower().removesuffix("_segmentation"): p for p in list_images(mask_dir).values()}
        items, missing, listed = [], [], []
        for row in _isic_rows(csv_path):
            iid = row["image_id"]
            listed.append(iid)
            try:
                label = labels_of_row(row, csv_path)
            except ConversionProblem as e:
                rep.problem(str(e))
                continue
            img, mask = images.get(iid), masks.get(iid.lower())
            if img is None or mask is None:
                missing.append(f"{iid} ({'image' if img is None else 'mask'})")
                continue
            items.append(Item(
                name=iid, image=img, diagnosis=[label], mask_files=[mask],
                source={"image": f"{data_dir.name}/{img.name}", "mask": f"{mask_dir.name}/{mask.name}",
                        "labels": csv_path.name, "split": part.native_split}))
        rep.missing_files(missing, csv_path.name, root, len(items))
        out[part.native_split] = (items, listed)
    if not out:
        names = " / ".join(p.csv_names[0] for p in parts)
        raise UserError(f"no {subset.name} label CSV ({names}) found under {root}; the diagnosis comes from it")
    return out


def _isic_rows(path: Path) -> list[dict[str, str]]:
    rows = read_csv_rows(path)
    if not rows:
        return []
    if rows[0][0].lower() in ("image_id", "img_id", "image", "id", "name"):
        header = ["image_id"] + [c.lower() for c in rows[0][1:]]
        rows = rows[1:]
    else:  # the official ISBI 2016 CSVs have no header
        header = ["image_id", "label"]
    return [dict(zip(header, r, strict=False)) for r in rows]


def binary_flag(value: str, where: str) -> bool:
    """A 0/1 CSV cell ("0", "1", "0.0", "1.0") as a bool."""
    try:
        v = float(value)
    except ValueError:
        raise ConversionProblem(f"{where}: expected 0 or 1, got {value!r}") from None
    if v not in (0.0, 1.0):
        raise ConversionProblem(f"{where}: expected 0 or 1, got {value!r}")
    return v == 1.0


# ----------------------------------------------------------------------------------------------------------------
# Masks


def read_given_mask(path: Path, hw: tuple[int, int]) -> np.ndarray:
    """A native mask file as bool ``[H, W]``.

    JPEG masks are thresholded at 128 (compression noise is expected there). Any other format must already be
    binary (0/255 or 0/1; colour masks use their brightest channel); stray values mean a damaged or non-binary
    mask and are refused, as is a size different from the image's.
    """
    try:
        with Image.open(path) as im:
            im.load()
            fmt = im.format
            if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
                a = np.asarray(im)
            else:
                has_alpha = im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info)
                rgba = np.asarray(im.convert("RGBA"))
                a = rgba[..., :3].max(axis=2)
                if has_alpha:
                    a = np.where(rgba[..., 3] > 0, a, 0)  # transparent pixels are background
    except FileNotFoundError:
        raise ConversionProblem(f"{path}: mask file not found") from None
    except Exception as e:  # PIL raises many types for damaged files
        raise ConversionProblem(f"{path}: unreadable mask ({type(e).__name__}: {e})") from None
    if a.shape != tuple(hw):
        raise ConversionProblem(f"{path}: mask is {a.shape[0]}x{a.shape[1]} but its image is {hw[0]}x{hw[1]} (HxW)")
    if fmt == "JPEG":
        return a >= 128
    values = np.unique(a)
    for on in (255, 1, 65535):
        if np.isin(values, (0, on)).all():
            return a == on
    shown = values[:6].tolist()
    raise ConversionProblem(f"{path}: {fmt} mask has values {shown}{'...' if len(values) > 6 else ''} "
                            "(JPEG-like noise); expected a binary 0/255 mask")


def polygons_to_mask(polygons: list[list[float]], hw: tuple[int, int]) -> np.ndarray:
    """Union of polygons in COCO pixel coordinates, rasterised by pycocotools (parts outside the image clipped)."""
    h, w = hw
    polys = [list(map(float, p)) for p in polygons if len(p) >= 6]
    if not polys:
        return np.zeros((h, w), bool)
    rles = coco_mask.frPyObjects(polys, h, w)
    with warnings.catch_warnings():  # pycocotools' decode trips a NumPy 2 DeprecationWarning (copy=False)
        warnings.simplefilter("ignore", DeprecationWarning)
        return coco_mask.decode(coco_mask.merge(rles)).astype(bool)


def boxes_to_mask(boxes: list[tuple[float, float, float, float]], hw: tuple[int, int]) -> np.ndarray:
    """Union of filled boxes: pixels ``round(x0) .. round(x1)-1`` (at least one), clipped, drawn by OpenCV."""
    h, w = hw
    m = np.zeros((h, w), np.uint8)
    for x0, y0, x1, y1 in boxes:
        c0, r0 = int(round(min(x0, x1))), int(round(min(y0, y1)))
        c1, r1 = max(int(round(max(x0, x1))), c0 + 1), max(int(round(max(y0, y1))), r0 + 1)
        c0, r0, c1, r1 = max(c0, 0), max(r0, 0), min(c1, w), min(r1, h)
        if c1 > c0 and r1 > r0:
            cv2.rectangle(m, (c0, r0), (c1 - 1, r1 - 1), 255, thickness=-1)
    return m > 0


def build_mask(item: Item, hw: tuple[int, int]) -> np.ndarray:
    h, w = hw
    coords = [v for p in item.polygons for v in p] + [v for b in item.boxes for v in b]
    if coords and not np.isfinite(np.asarray(coords, float)).all():
        raise ConversionProblem(f"{item.image}: its annotation has a non-finite coordinate (NaN or inf)")
    mask = np.zeros((h, w), bool)
    for f in item.mask_files:
        mask |= read_given_mask(f, hw)
    if item.polygons:
        polys = item.polygons
        if item.normalised:
            polys = [[v * (w if i % 2 == 0 else h) for i, v in enumerate(p)] for p in polys]
        mask |= polygons_to_mask(polys, hw)
    if item.boxes:
        boxes = item.boxes
        if item.normalised:
            boxes = [(x0 * w, y0 * h, x1 * w, y1 * h) for x0, y0, x1, y1 in boxes]
        mask |= boxes_to_mask(boxes, hw)
    return mask


# ----------------------------------------------------------------------------------------------------------------
# Writing


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
        with Image.open(item.image) as im:
            fmt = im.format
    except RecordError as e:
        raise ConversionProblem(str(e)) from None
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
                  mask=rel_mask, query=query_for(subset, rid), diagnosis=list(item.diagnosis), cot=None,
                  source=item.source)


Collect = Callable[[Path, ConvertOptions, Reporter], "tuple[list[Item], int]"]


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
    subset = M3DS_SUBSETS[subset_name]
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
