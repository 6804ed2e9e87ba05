"""``sim4seg predict``: one image -> answer, mask PNG(s), overlay PNG and a JSON; or a batch (a folder or a CSV)
-> one JSONL line per image, resumable.

Inputs are validated before the model is loaded (a bad file or an empty question costs no model load). Batch
output in OUT: ``predictions.jsonl`` (answer, diagnosis, mask as COCO RLE, mask PNG path, SAM IoU, flags),
``masks/`` (0/255 PNGs), ``errors.jsonl`` (the files of the last run that could not be used). A line is written
as soon as its image is done, so an interrupted run resumes where it stopped: images already in
``predictions.jsonl`` are skipped.
"""

from __future__ import annotations

import csv
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from omegaconf import OmegaConf
from tqdm import tqdm

from sim4seg.data.io import DEFAULT_MAX_PIXELS, load_image
from sim4seg.data.readers import DEFAULT, ReadOptions, read_size
from sim4seg.data.readers.dicom import is_dicom
from sim4seg.data.schema import RecordError
from sim4seg.errors import UserError
from sim4seg.inputs import validate_query, validate_tts
from sim4seg.jsonl import append_jsonl, atomic_write_text, read_jsonl

SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".dcm", ".dicom", ".nii", ".nii.gz")
PREDICTIONS, ERRORS, MASKS = "predictions.jsonl", "errors.jsonl", "masks"


def run_max_pixels(ckpt: str | Path) -> int:
    """The run's ``data.max_pixels``, from its config.yaml (no model, no torch)."""
    path = Path(ckpt) / "config.yaml"
    if not path.exists():
        raise UserError(f"ckpt={ckpt}: no config.yaml there; pass a run directory written by sim4seg.train")
    return int(OmegaConf.load(path).get("data", {}).get("max_pixels", DEFAULT_MAX_PIXELS))


def _predictor(ckpt: str | Path, max_new_tokens: int | None):
    from sim4seg.inference import Predictor  # torch and the model only once the inputs are known to be usable

    return Predictor.from_run(ckpt, max_new_tokens)


def _stem(path: str | Path) -> str:
    name = Path(path).name
    return name[: -len(".nii.gz")] if name.lower().endswith(".nii.gz") else Path(name).stem


def predict(ckpt: str | Path, image_path: str | Path, query: str, out: str | Path | None = None,
            max_new_tokens: int | None = None, options: ReadOptions = DEFAULT, max_pixels: int | None = None,
            m: int = 1, n: int = 1, select: str = "consensus") -> dict:
    """One image. Writes ``<stem>_mask.png`` (and ``_mask2.png``... for further [SEG]s), ``<stem>_overlay.png``
    and ``<stem>.json`` into ``out`` when given; returns the JSON's content."""
    query = validate_query(query)
    validate_tts(m, n, select)
    max_pixels = max_pixels or run_max_pixels(ckpt)
    try:
        image = load_image(image_path, max_pixels, options)
    except RecordError as e:
        raise UserError(str(e)) from None
    from sim4seg.inference import overlay, write_mask_png

    pred = _predictor(ckpt, max_new_tokens).predict(image, query, m, n, select, sample_id=Path(image_path).name)
    result = {"image": str(image_path), "query": query, "answer": pred.answer, "diagnosis": pred.diagnosis,
              "n_seg": pred.n_seg, "flags": pred.flags, "truncated": "truncated" in pred.flags, "finding": pred.finding,
              "mask_area": int(pred.mask.sum()), "sam_iou": pred.sam_iou}
    if out is not None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        stem = _stem(image_path)
        write_mask_png(out / f"{stem}_mask.png", pred.mask)
        for i in range(1, len(pred.seg_masks)):  # every further [SEG] gets its own mask file
            write_mask_png(out / f"{stem}_mask{i + 1}.png", pred.seg_masks[i])
        from PIL import Image

        Image.fromarray(overlay(image, pred.mask, pred.region)).save(out / f"{stem}_overlay.png")
        result.update(mask_png=str(out / f"{stem}_mask.png"), overlay_png=str(out / f"{stem}_overlay.png"))
        (out / f"{stem}.json").write_text(json.dumps(result, indent=1))
    return result


@dataclass
class Item:
    key: str    # the image as named in the input (path relative to the folder, or the CSV cell)
    path: Path
    query: str


def list_inputs(images: str | Path, query: str | None) -> list[Item]:
    """A folder (every supported file under it, recursively; extension-less DICOM files too) or a CSV with an
    ``image`` column (paths relative to the CSV's folder) and an optional ``query`` column (default ``query``)."""
    src = Path(images)
    if src.is_dir():
        files = sorted(p for p in src.rglob("*") if p.is_file() and not any(x.startswith(".") for x in
                       p.relative_to(src).parts) and (p.name.lower().endswith(SUFFIXES)
                                                      or (p.suffix == "" and is_dicom(p))))
        if not files:
            raise UserError(f"--images {src}: no image files there ({', '.join(SUFFIXES)}, or DICOM)")
        return [Item(p.relative_to(src).as_posix(), p, query or "") for p in files]
    if src.suffix.lower() != ".csv" or not src.is_file():
        raise UserError(f"--images {src}: pass a folder of images or a CSV file with an 'image' column")
    with open(src, newline="", encoding="utf-8-sig") as f:
        rows = list(csv.DictReader(f))
    if not rows or "image" not in rows[0]:
        raise UserError(f"{src}: needs a header with an 'image' column (and optionally 'query')")
    return [Item(r["image"], src.parent / r["image"], (r.get("query") or "").strip() or (query or ""))
            for r in rows if (r.get("image") or "").strip()]


def _rle(mask: np.ndarray) -> dict:
    from pycocotools import mask as coco_mask

    r = coco_mask.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(x) for x in r["size"]], "counts": r["counts"].decode("ascii")}


def mask_name(key: str) -> str:
    return key.replace("/", "__") + ".png"


def predict_batch(ckpt: str | Path, images: str | Path, out: str | Path, query: str | None = None,
                  max_new_tokens: int | None = None, options: ReadOptions = DEFAULT, max_pixels: int | None = None,
                  m: int = 1, n: int = 1, select: str = "consensus", progress: bool | None = None) -> dict:
    """Predict every listed image not yet in ``out/predictions.jsonl``; returns the counts of the summary."""
    validate_tts(m, n, select)
    out = Path(out)
    max_pixels = max_pixels or run_max_pixels(ckpt)
    items = list_inputs(images, query)
    done = {r.get("image") for r in read_jsonl(out / PREDICTIONS)}
    todo = [it for it in items if it.key not in done]
    bad: list[dict] = []

    def fail(it: Item, msg: str) -> None:
        bad.append({"image": it.key, "error": msg})
        tqdm.write(f"skipped: {msg}", file=sys.stderr)

    valid = []
    for it in todo:  # everything a header shows, before the model is loaded
        try:
            validate_query(it.query)
            read_size(it.path, max_pixels, options)
            valid.append(it)
        except UserError as e:
            fail(it, f"{it.key}: {e} (give --query or a 'query' column)")
        except RecordError as e:
            fail(it, str(e))
    written = 0
    if valid:
        from sim4seg.inference import write_mask_png

        predictor = _predictor(ckpt, max_new_tokens)
        (out / MASKS).mkdir(parents=True, exist_ok=True)
        for it in tqdm(valid, desc="predict", unit="img", disable=True if progress is False else None, file=sys.stderr):
            try:
                _, pred = predictor.predict_file(it.path, it.query, options, max_pixels, m=m, n=n, select=select)
            except UserError as e:
                fail(it, str(e))
                continue
            rel = f"{MASKS}/{mask_name(it.key)}"
            write_mask_png(out / rel, pred.mask)
            append_jsonl(out / PREDICTIONS, [{
                "image": it.key, "query": it.query, "answer": pred.answer, "diagnosis": pred.diagnosis,
                "mask": _rle(pred.mask), "mask_png": rel, "mask_area": int(pred.mask.sum()), "sam_iou": pred.sam_iou,
                "n_seg": pred.n_seg, "flags": pred.flags, "finding": pred.finding}])
            written += 1
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / ERRORS, "".join(json.dumps(b) + "\n" for b in bad))
    return {"predicted": written, "already_done": len(items) - len(todo), "bad": len(bad), "out": str(out)}


def summary_line(s: dict) -> str:
    line = (f"predicted {s['predicted']} image(s) into {Path(s['out']) / PREDICTIONS}; {s['already_done']} already "
            "there (skipped)")
    if s["bad"]:
        line += f"; {s['bad']} bad file(s) skipped (listed in {Path(s['out']) / ERRORS})"
    return line
