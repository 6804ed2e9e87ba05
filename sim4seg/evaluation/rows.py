"""One row per sample, as written to ``samples.jsonl``: the teacher-forced scorer and generate-mode rows.

Scoring rule (both modes, and training's validation): a sample has one target mask, and its score is the first
``[SEG]`` of the answer against it (``inter``/``union``/... of that mask). In teacher mode the answer is the
ground-truth one, so for M3DS answers, which carry one ``[SEG]``, this is LISA's validation; in generate mode
it is the first ``[SEG]`` the model wrote (a second one is flagged ``multi_seg``); no ``[SEG]`` scores an empty
mask (flagged ``no_seg``). ``n_seg`` records how many there were. Negatives (an empty target), records with
several targets (every ``[SEG]`` against the target its sentence names) and the region diagnostics:
:mod:`sim4seg.evaluation.clinical`.

Test-time scaling and "no finding": the m paths vote (:func:`sim4seg.metrics.vote_gives_mask`): when most paths
answer without ``[SEG]``, the answer gives no mask; otherwise the mask is selected among the paths with one.
"""

from __future__ import annotations

import functools

import torch
from omegaconf import DictConfig, ListConfig
from transformers import LogitsProcessorList

from sim4seg.data.vocab import Subset
from sim4seg.evaluation import tts
from sim4seg.evaluation.answer import decode_answer
from sim4seg.evaluation.clinical import answer_fields, mask_fields, truth
from sim4seg.metrics import diagnosis_correct, extract_labels, grading_vocabulary, seg_labels, vote_gives_mask
from sim4seg.model.sim4seg import Decoded, Generation, Sim4Seg


def as_list(x) -> list[int]:
    return [int(v) for v in x] if isinstance(x, (list, tuple, ListConfig)) else [int(x)]


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
    for sid, subset, rec, dec, gt_masks, hw in zip(batch["ids"], subsets, batch["records"], out.masks, batch["masks"],
                                                  batch["orig_hw"], strict=True):
        row = {"id": sid, "subset": subset, "n_seg": int(dec.logits.shape[0]), "flags": []}
        if not torch.isfinite(dec.logits).all():
            rows.append({**row, "error": "non-finite mask logits"})
            continue
        gt, targets = truth(rec, gt_masks, hw)
        preds = list(dec.logits.cpu() > 0)
        labels = [x for x, _ in targets] if targets else [None] * len(preds)  # the reference names them in order
        rows.append({**row, **answer_fields(rec, preds, labels, gt, targets, dec.cells, dec.scores, model.clip_view),
                     **sim_std(dec)})
    return rows


def path_masks(path: Generation, text: str, first: torch.Tensor, vocabulary: Subset, several: bool,
               ) -> tuple[list[torch.Tensor], list[str | None]]:
    """One path's [SEG] masks (bool [H, W] each, the first as selected by test-time scaling) and, for a record with
    several targets, the label each [SEG]'s sentence names."""
    preds = [first, *(path.decoded.logits[1:].cpu() > 0)] if path.n_seg else []
    if not several:
        return preds, [None] * len(preds)
    labels = seg_labels(text, vocabulary)  # "[SEG]" typed out of plain tokens is no [SEG]: align to the masks
    return preds, (labels + [None] * len(preds))[:len(preds)]


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
    for b, (rec, paths) in enumerate(zip(batch["records"], all_paths, strict=True)):
        gt, targets = truth(rec, batch["masks"][b], batch["orig_hw"][b])
        # A negative is graded with "normal" added; positives keep their subset's labels (a new label would change
        # the rule, e.g. two-label subsets read "no malignancy" as benign).
        sub = grading_vocabulary(vocab[rec.subset]) if rec.is_negative else vocab[rec.subset]
        texts = [decode_answer(tok, p.tokens) for p in paths]
        labels = [tuple(extract_labels(x, sub, fmt)) for x in texts]
        correct = [diagnosis_correct(x, rec.diagnosis, sub, fmt) for x in texts]
        cand = tts.candidates(model, paths, batch["sam_embeddings"][b], batch["resize_hw"][b], batch["orig_hw"][b],
                              n, cfg.seed, rec.id, t.flip_p, t.k_jitter, t.shift)
        row = {"id": rec.id, "subset": rec.subset, "target": rec.diagnosis}
        if not cand.finite:
            rows.append({**row, "error": "non-finite mask logits"})
            continue
        masks_of = functools.partial(path_masks, vocabulary=vocab[rec.subset], several=targets is not None)
        grid = {}
        for mi in ms:
            for ni in ns:
                c, s, has_seg = cand.prefix(mi, ni)
                # most of the first mi paths answered without [SEG]: no mask (their candidates are empty)
                voted = has_seg if vote_gives_mask([p.n_seg > 0 for p in paths[:mi]]) else ~has_seg
                pick = tts.select_mask(c, t.select_mask, s, gt, voted)
                opick = tts.select_mask(c, "oracle", s, gt)
                dx = tts.majority(labels[:mi], [p.mean_logprob for p in paths[:mi]]) if mi > 1 else 0
                sel = dx if t.select_diagnosis == "majority" else next((i for i in range(mi) if correct[i]), 0)
                j, oj = pick // ni, opick // ni  # the paths of the chosen candidates
                grid[f"m={mi},n={ni}"] = {**mask_fields(*masks_of(paths[j], texts[j], c[pick]), gt, targets),
                                          "correct": correct[sel], "path": sel, "mask_path": j, "mask": c[pick],
                                          "oracle": {**mask_fields(*masks_of(paths[oj], texts[oj], c[opick]), gt,
                                                                   targets), "correct": any(correct[:mi])}}
        main = grid[f"m={m},n={n}"]
        p, q = paths[main["path"]], paths[main["mask_path"]]
        flags = [f for f, on in (("no_seg", p.n_seg == 0), ("multi_seg", p.n_seg > 1 and not targets),
                                 ("truncated", p.truncated)) if on]
        preds, seg_of = masks_of(q, texts[main["mask_path"]], main["mask"])
        cells, scores = (q.decoded.cells, q.decoded.scores) if q.n_seg else (None, None)
        row.update(answer_fields(rec, preds, seg_of, gt, targets, cells, scores, model.clip_view))
        row.update(correct=main["correct"], answer=texts[main["path"]], pred=list(labels[main["path"]]),
                   n_seg=p.n_seg, flags=flags, **sim_std(p.decoded))
        if len(grid) > 1 or m > 1 or n > 1:
            keep = ("inter", "union", "pairs", "correct", "oracle")
            row["tts"] = {k: {kk: v[kk] for kk in keep if kk in v} for k, v in grid.items()}
        rows.append(row)
        cells = next((q.decoded.cells[0].cpu() for q in paths if q.n_seg and q.decoded.cells is not None), None)
        shown.append((b, main["mask"], cells))
    return rows, shown
