"""``sim4seg predict``: one image and a question -> answer, mask PNG, overlay PNG and a JSON with everything."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import torch

from sim4seg.data.io import load_image
from sim4seg.data.schema import RecordError
from sim4seg.errors import UserError
from sim4seg.model.checkpoint import load_run
from sim4seg.report import region_on_image


def predict(ckpt: str | Path, image_path: str | Path, query: str, out: str | Path | None = None,
            max_new_tokens: int = 128) -> dict:
    model, proc, _ = load_run(ckpt)
    model.eval()
    try:
        image = load_image(image_path)  # PNG/JPEG of any size; grayscale, RGBA, palette and 16-bit converted
    except RecordError as e:
        raise UserError(str(e)) from None
    batch = proc.collate([proc.sample(image, query, None, None, str(image_path))], left_pad=True)
    tok = proc.tokenizer
    with torch.no_grad():
        g = model.generate(batch, max_new_tokens=max_new_tokens, eos_token_id=tok.eos_token_id,
                           pad_token_id=tok.pad_token_id)[0]
    answer = tok.decode(g.tokens, skip_special_tokens=False).replace(tok.eos_token, "").strip()
    h, w = image.shape[:2]
    mask = (g.decoded.logits[0] > 0).numpy() if g.n_seg else np.zeros((h, w), bool)
    result = {"image": str(image_path), "query": query, "answer": answer, "n_seg": g.n_seg,
              "truncated": g.truncated, "mask_area": int(mask.sum()),
              "sam_iou": float(g.decoded.iou[0]) if g.n_seg else None,
              "region_cells": g.decoded.cells[0].nonzero().tolist() if g.n_seg and g.decoded.cells is not None else None}
    if out is not None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        stem = Path(image_path).stem
        cv2.imwrite(str(out / f"{stem}_mask.png"), mask.astype(np.uint8) * 255)
        for i in range(1, g.n_seg):  # every further [SEG] gets its own mask file; the first is the answer's mask
            cv2.imwrite(str(out / f"{stem}_mask{i + 1}.png"), (g.decoded.logits[i] > 0).numpy().astype(np.uint8) * 255)
        vis = image[..., ::-1].copy()
        if g.n_seg and g.decoded.cells is not None:  # the region-mask grid, shaded
            region = region_on_image(g.decoded.cells[0], (h, w), model.clip_view)
            vis[region] = (0.7 * vis[region] + 0.3 * np.array([255, 128, 0])).astype(np.uint8)
        contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        cv2.drawContours(vis, contours, -1, (0, 0, 255), max(1, min(h, w) // 200))
        cv2.imwrite(str(out / f"{stem}_overlay.png"), vis)
        result.update(mask_png=str(out / f"{stem}_mask.png"), overlay_png=str(out / f"{stem}_overlay.png"))
        (out / f"{stem}.json").write_text(json.dumps(result, indent=1))
    return result
