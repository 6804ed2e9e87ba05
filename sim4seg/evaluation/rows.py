"""One row per sample, as written to ``samples.jsonl``: the teacher-forced scorer and generate-mode rows.

Scoring rule (both modes, and training's validation): a sample has one target mask, and its score is the first
``[SEG]`` of the answer against it (``inter``/``union``/... of that mask). In teacher mode the answer is the
ground-truth one, so for M3DS answers, which carry one ``[SEG]``, this is LISA's validation; in generate mode
it is the first ``[SEG]`` the model wrote (a second one is flagged ``multi_seg``); no ``[SEG]`` scores an empty
mask (flagged ``no_seg``). ``n_seg`` records how many there were.
"""

from __future__ import annotations

import torch
from omegaconf import DictConfig, ListConfig
from transformers import LogitsProcessorList

from sim4seg.evaluation import tts
from sim4seg.evaluation.answer import decode_answer
from sim4seg.metrics import diagnosis_correct, extract_labels, mask_counts
from sim4seg.model.sim4seg import Decoded, Sim4Seg


def as_list(x) -> list[int]:
    return [int(v) for v in x] if isinstance(x, (list, tuple, ListConfig)) else [int(x)]


def counts(pred: torch.Tensor, gt: torch.Tensor) -> dict:
    """One sample's row fields (bool [H, W] masks) from the exact counts of sim4seg.metrics."""
    inter, union, pred_area, gt_area = (int(x) for x in mask_counts([pred], [gt])[0])
    return {"inter": inter, "union": union, "iou": inter / union if union else 1.0, "pred_area": pred_area,
            "gt_area": gt_area}


def sim_std(decoded: Decoded) -> dict:
    """``{"sim_std": [s floats]}`` (spread of Eq. 4's similarities per [SEG]) where the model reports it."""
    s = getattr(decoded, "sim_std", None)
    return {} if s is None else {"sim_std": [float(x) for x in s.flatten()]}


def teacher_rows(model: Sim4Seg, batch: dict) -> list[dict]:
    """The teacher-forced scorer (eval ``mode=teacher`` and training's validation): one forward pass with the
    ground-truth answer in context, one row per sample (see the module docstring for the rule).

    batch: a collated training batch with ``masks`` (B tensors [s_b, H, W]) and ``sam_images`` or
    ``sam_embeddings``. -> B rows with id, subset, n_seg, flags and the counts, or an ``error``.
    """
    rows = []
    out = model(batch)
    subsets = batch.get("subsets") or [None] * len(batch["ids"])
    for sid, subset, dec, gt in zip(batch["ids"], subsets, out.masks, batch["masks"]):
        row = {"id": sid, "subset": subset, "n_seg": int(dec.logits.shape[0]), "flags": []}
        if not torch.isfinite(dec.logits).all():
            rows.append({**row, "error": "non-finite mask logits"})
            continue
        target = gt[0].cpu() > 0.5
        pred = dec.logits[0].cpu() > 0 if dec.logits.shape[0] else torch.zeros_like(target)
        rows.append({**row, **counts(pred, target), **sim_std(dec)})
    return rows


def generate_rows(model: Sim4Seg, proc, batch: dict, cfg: DictConfig, vocab: dict, fmt: str,
                  logits_processor: LogitsProcessorList | None = None) -> tuple[list[dict], list]:
    """Generate m paths per image, decode n region-mask perturbations per path, score every (m', n') prefix.

    batch: a left-padded prompt batch with ``sam_embeddings``; cfg: the eval config (``tts``, ``seed``, and
    ``max_new_tokens`` resolved to a number). -> (rows, [(b, chosen mask bool [H, W], region cells or None)])
    """
    t = cfg.tts
    ms, ns = as_list(t.m), as_list(t.n)
    m, n = max(ms), max(ns)
    tok = proc.tokenizer
    all_paths = tts.generate_paths(model, batch, m, cfg.seed, t.temperature, t.top_p, cfg.max_new_tokens,
                                   tok.eos_token_id, tok.pad_token_id, logits_processor)
    rows, shown = [], []
    for b, (rec, paths) in enumerate(zip(batch["records"], all_paths)):
        gt = batch["masks"][b][0].cpu() > 0.5
        sub = vocab[rec.subset]
        texts = [decode_answer(tok, p.tokens) for p in paths]
        labels = [tuple(extract_labels(x, sub, fmt)) for x in texts]
        correct = [diagnosis_correct(x, rec.diagnosis, sub, fmt) for x in texts]
        cand = tts.candidates(model, paths, batch["sam_embeddings"][b], batch["resize_hw"][b], batch["orig_hw"][b],
                              n, cfg.seed, rec.id, t.flip_p, t.k_jitter, t.shift)
        row = {"id": rec.id, "subset": rec.subset, "target": rec.diagnosis}
        if not cand.finite:
            rows.append({**row, "error": "non-finite mask logits"})
            continue
        grid = {}
        for mi in ms:
            for ni in ns:
                c, s, has_seg = cand.prefix(mi, ni)
                pick = tts.select_mask(c, t.select_mask, s, gt, has_seg)
                opick = tts.select_mask(c, "oracle", s, gt)
                dx = tts.majority(labels[:mi], [p.mean_logprob for p in paths[:mi]]) if mi > 1 else 0
                sel = dx if t.select_diagnosis == "majority" else next((i for i in range(mi) if correct[i]), 0)
                grid[f"m={mi},n={ni}"] = {**counts(c[pick], gt), "correct": correct[sel],
                                          "oracle": {**counts(c[opick], gt), "correct": any(correct[:mi])},
                                          "path": sel, "mask": c[pick]}
        main = grid[f"m={m},n={n}"]
        p = paths[main["path"]]
        flags = [f for f, on in (("no_seg", p.n_seg == 0), ("multi_seg", p.n_seg > 1),
                                 ("truncated", p.truncated)) if on]
        row.update({k: main[k] for k in ("inter", "union", "iou", "pred_area", "gt_area", "correct")})
        row.update(answer=texts[main["path"]], pred=list(labels[main["path"]]), n_seg=p.n_seg, flags=flags,
                   **sim_std(p.decoded))
        if len(grid) > 1 or m > 1 or n > 1:
            row["tts"] = {k: {kk: v[kk] for kk in ("inter", "union", "correct", "oracle")} for k, v in grid.items()}
        rows.append(row)
        cells = next((q.decoded.cells[0].cpu() for q in paths if q.n_seg and q.decoded.cells is not None), None)
        shown.append((b, main["mask"], cells))
    return rows, shown
