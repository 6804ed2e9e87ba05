"""Evaluation entry point: per-subset gIoU / cIoU / Dice / Acc tables laid out as the paper's, resumable.

    python -m sim4seg.eval ckpt=runs/demo data.root=data/synthetic split=test mode=generate out=results/demo
    torchrun --nproc_per_node 4 -m sim4seg.eval ...        # samples sharded over ranks, merged on rank 0

Every sample becomes one line of ``OUT/samples.jsonl`` as soon as it is scored, so a rerun with the same ``out``
skips what is done; ``metrics.json`` / ``metrics.md`` are always recomputed from all lines.
"""

from __future__ import annotations

import functools
import json
import math
import os
from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig, ListConfig
from torch.utils.data import DataLoader, Subset
from tqdm import tqdm

from sim4seg import tts
from sim4seg.data.dataset import M3DSDataset, collate
from sim4seg.data.vocab import load_vocabulary
from sim4seg.errors import UserError
from sim4seg.metrics import SegmentationMeter, diagnosis_correct, extract_labels, mask_counts
from sim4seg.model.checkpoint import load_run
from sim4seg.model.embedding_cache import EmbeddingCache
from sim4seg.model.rvls2m import perturb_cells
from sim4seg.report import overlay_png, write_reports
from sim4seg.runtime import device, init_distributed, strip_launcher_args, user_errors


def as_list(x) -> list[int]:
    return [int(v) for v in x] if isinstance(x, (list, tuple, ListConfig)) else [int(x)]


def read_rows(paths: list[Path]) -> list[dict]:
    rows = []
    for p in paths:
        if p.exists():
            for line in p.read_text().splitlines():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError:
                    pass  # a line cut by a kill mid-write: that sample is simply redone
    return rows


def drop_partial_line(path: Path) -> None:
    """A kill mid-write can leave a last line without its newline: cut it, so that sample is redone cleanly."""
    if path.exists():
        data = path.read_bytes()
        if data and not data.endswith(b"\n"):
            path.write_bytes(data[: data.rfind(b"\n") + 1])


def append_rows(path: Path, rows: list[dict]) -> None:
    with open(path, "a") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
        f.flush()
        os.fsync(f.fileno())


def counts(pred: torch.Tensor, gt: torch.Tensor) -> dict:
    """One sample's row fields from the exact counts of sim4seg.metrics."""
    inter, union, pred_area, gt_area = (int(x) for x in mask_counts([pred], [gt])[0])
    return {"inter": inter, "union": union, "iou": inter / union if union else 1.0, "pred_area": pred_area,
            "gt_area": gt_area}


def teacher_rows(model, batch: dict) -> list[dict]:
    rows = []
    out = model(batch)
    for rec, dec, gt in zip(batch["records"], out.masks, batch["masks"]):
        row = {"id": rec.id, "subset": rec.subset, "n_seg": int(dec.logits.shape[0]), "flags": []}
        if not torch.isfinite(dec.logits).all():
            rows.append({**row, "error": "non-finite mask logits"})
            continue
        pred = dec.logits[0] > 0 if dec.logits.shape[0] else torch.zeros_like(gt[0], dtype=torch.bool)
        rows.append({**row, **counts(pred.cpu(), gt[0].cpu() > 0.5)})
    return rows


def generate_rows(model, proc, batch: dict, cfg: DictConfig, vocab: dict, fmt: str) -> tuple[list[dict], list]:
    """Generate m paths per image, decode n region-mask perturbations per path, score every (m', n') prefix."""
    t = cfg.tts
    ms, ns = as_list(t.m), as_list(t.n)
    m, n = max(ms), max(ns)
    tok = proc.tokenizer
    gens = model.generate(batch, max_new_tokens=cfg.max_new_tokens, do_sample=m > 1, temperature=t.temperature,
                          top_p=t.top_p, num_return_sequences=m, eos_token_id=tok.eos_token_id,
                          pad_token_id=tok.pad_token_id)
    gen = torch.Generator().manual_seed(cfg.seed)
    rows, shown = [], []
    for b, rec in enumerate(batch["records"]):
        gt = batch["masks"][b][0].cpu() > 0.5
        sub = vocab[rec.subset]
        paths = gens[b * m:(b + 1) * m]
        texts = [tok.decode(p.tokens, skip_special_tokens=False).replace(tok.eos_token, "").strip() for p in paths]
        labels = [tuple(extract_labels(x, sub, fmt)) for x in texts]
        correct = [diagnosis_correct(x, rec.diagnosis, sub, fmt) for x in texts]
        cands, sam_iou, cells0 = [], [], None
        nonfinite = False
        for p in paths:
            d = p.decoded
            if p.n_seg == 0:  # no [SEG]: an empty mask, flagged and counted
                cands.append(torch.zeros((n, *gt.shape), dtype=torch.bool))
                sam_iou.append(torch.zeros(n))
                continue
            logits, iou = d.logits[:1], d.iou[:1]
            if n > 1 and d.cells is not None:  # copy 0 is the unperturbed mask generate already decoded
                cells = perturb_cells(d.cells[:1], d.scores[:1], n, t.flip_p, t.k_jitter, t.shift, gen)[0, 1:]
                more, more_iou = model.decode(batch["sam_embeddings"][b], d.embeds[:1].expand(n - 1, -1), cells,
                                              batch["resize_hw"][b], batch["orig_hw"][b])
                logits, iou = torch.cat([logits, more]), torch.cat([iou, more_iou])
            elif n > 1:  # RVLS2M off: nothing to perturb, every candidate is the same mask
                logits, iou = logits.expand(n, -1, -1), iou.expand(n)
            nonfinite |= not bool(torch.isfinite(logits).all())
            cands.append(logits.cpu() > 0)
            sam_iou.append(iou.float().cpu())
            if cells0 is None and d.cells is not None:
                cells0 = d.cells[0].cpu()
        row = {"id": rec.id, "subset": rec.subset, "target": rec.diagnosis}
        if nonfinite:
            rows.append({**row, "error": "non-finite mask logits"})
            continue
        grid = {}
        for mi in ms:
            for ni in ns:
                c = torch.cat([x[:ni] for x in cands[:mi]])
                s = torch.cat([x[:ni] for x in sam_iou[:mi]])
                pick = tts.select_mask(c, t.select_mask, s, gt)
                opick = tts.select_mask(c, "oracle", s, gt)
                dx = tts.majority(labels[:mi], [p.mean_logprob for p in paths[:mi]]) if mi > 1 else 0
                sel = dx if t.select_diagnosis == "majority" else next((i for i in range(mi) if correct[i]), 0)
                grid[f"m={mi},n={ni}"] = {**counts(c[pick], gt), "correct": correct[sel],
                                          "oracle": {**counts(c[opick], gt), "correct": any(correct[:mi])},
                                          "path": sel, "cand": pick}
        main = grid[f"m={m},n={n}"]
        p = paths[main["path"]]
        flags = [f for f, on in (("no_seg", p.n_seg == 0), ("multi_seg", p.n_seg > 1),
                                 ("truncated", p.truncated)) if on]
        row.update({k: main[k] for k in ("inter", "union", "iou", "pred_area", "gt_area", "correct")})
        row.update(answer=texts[main["path"]], pred=list(labels[main["path"]]), n_seg=p.n_seg, flags=flags)
        if len(grid) > 1 or m > 1 or n > 1:
            row["tts"] = {k: {kk: v[kk] for kk in ("inter", "union", "correct", "oracle")} for k, v in grid.items()}
        rows.append(row)
        shown.append((b, torch.cat(cands)[main["cand"]], cells0))
    return rows, shown


def aggregate(rows: list[dict], vocab: dict, mode: str, cfg: DictConfig) -> dict:
    """metrics.json: per subset, Avg. (mean over subsets) and overall (pooled), in percent."""
    ok = [r for r in rows if "error" not in r]

    def score(rs: list[dict], key=None) -> dict:
        meter = SegmentationMeter()
        pick = (lambda r: r) if key is None else key
        meter.add([pick(r)["inter"] for r in rs], [pick(r)["union"] for r in rs])
        res = {k: 100 * v for k, v in meter.result().items()}
        if mode == "generate":
            res["Acc"] = 100 * sum(bool(pick(r)["correct"]) for r in rs) / len(rs)
        return {**res, "n": len(rs)}

    subsets = sorted({r["subset"] for r in ok}, key=lambda s: list(vocab).index(s) if s in vocab else 10**6)
    per = {s: score([r for r in ok if r["subset"] == s]) for s in subsets}
    keys = [k for k in ("gIoU", "cIoU", "Dice", "Acc") if per and k in next(iter(per.values()))]
    result = {"mode": mode, "split": cfg.split, "n_samples": len(ok), "n_errors": len(rows) - len(ok),
              "flags": {f: sum(f in r.get("flags", []) for r in ok) for f in ("no_seg", "multi_seg", "truncated")},
              "subsets": per, "avg": {k: sum(per[s][k] for s in per) / len(per) for k in keys} if per else {},
              "overall": score(ok) if ok else {},
              "selection": {"mask": cfg.tts.select_mask, "diagnosis": cfg.tts.select_diagnosis}}
    tts_keys = sorted({k for r in ok for k in r.get("tts", {})}, key=lambda k: tuple(int(x[2:]) for x in k.split(",")))
    if tts_keys:
        result["tts"] = {k: {"selected": score(ok, lambda r, k=k: r["tts"][k]),
                             "oracle": score(ok, lambda r, k=k: r["tts"][k]["oracle"])} for k in tts_keys}
    return result


def evaluate(cfg: DictConfig) -> dict:
    if cfg.mode not in ("generate", "teacher"):
        raise UserError(f"mode={cfg.mode!r}: use generate or teacher")
    if cfg.tts.select_mask not in tts.MASK_SELECTIONS or cfg.tts.select_diagnosis not in tts.DIAGNOSIS_SELECTIONS:
        raise UserError(f"tts.select_mask must be one of {tts.MASK_SELECTIONS} and tts.select_diagnosis one of "
                        f"{tts.DIAGNOSIS_SELECTIONS}")
    if not cfg.ckpt:
        raise UserError("set ckpt=RUN_DIR (a directory written by sim4seg.train)")
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    rank, world = init_distributed() if distributed else (0, 1)
    dev = device()
    torch.manual_seed(cfg.seed)
    model, proc, train_cfg = load_run(cfg.ckpt, cfg.get("rvls2m"))
    model.to(dev).eval()
    # How the diagnosis span is found follows the trained answer format ("seg" answers carry none: auto).
    fmt = train_cfg.data.answer_format if train_cfg.data.answer_format in ("cot", "diagnosis") else "auto"
    d = cfg.data
    ds = M3DSDataset(d.root, cfg.split, proc, train_cfg.data.answer_format, d.on_error, d.max_pixels, with_answer=cfg.mode == "teacher",
                     include_subsets=d.include_subsets, exclude_subsets=d.exclude_subsets,
                     include_modalities=d.include_modalities, exclude_modalities=d.exclude_modalities)
    vocab = load_vocabulary(d.root)
    out = Path(cfg.out)
    (out / "overlays").mkdir(parents=True, exist_ok=True)
    shard = out / ("samples.jsonl" if world == 1 else f"samples.rank{rank}.jsonl")
    all_files = [out / "samples.jsonl", *out.glob("samples.rank*.jsonl")]
    drop_partial_line(shard)
    done = {r["id"] for r in read_rows(all_files)}
    if rank == 0:  # records.jsonl lines that cannot be used at all become error rows too (id = file:line)
        append_rows(shard, [{"id": p.split(": ", 1)[0], "subset": None, "error": p} for p in ds.problems
                            if p.split(": ", 1)[0] not in done])
    todo = [i for i in range(len(ds)) if i % world == rank and ds.records[i].id not in done]
    if cfg.max_samples:
        todo = todo[: max(0, cfg.max_samples - len(done))]
    loader = DataLoader(Subset(ds, todo), batch_size=cfg.batch_size, num_workers=d.num_workers,
                        collate_fn=functools.partial(collate, proc, left_pad=cfg.mode == "generate"))
    cache = EmbeddingCache(cfg.cache_dir, model.sam.image_encoder) if cfg.cache_dir else None
    shown = {s: len(list((out / "overlays").glob(f"{s}_*.png"))) for s in vocab}
    bar = tqdm(total=len(todo), desc=f"eval[{cfg.mode}]", disable=rank != 0 or not cfg.progress)
    meter = SegmentationMeter()
    with torch.no_grad():
        for batch in loader:
            rows = [{"id": e["id"], "subset": None, "error": e["error"]} for e in batch["errors"]]
            if "input_ids" in batch:
                batch = {k: (v.to(dev) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}
                # SAM image embeddings once per image (shared by all TTS candidates), from the cache if enabled.
                sam_images = batch.pop("sam_images")
                batch["sam_embeddings"] = cache(sam_images) if cache else model.encode_images(sam_images)
                if cfg.mode == "teacher":
                    new = teacher_rows(model, batch)
                    rows += new
                else:
                    new, pics = generate_rows(model, proc, batch, cfg, vocab, fmt)
                    rows += new
                    for b, pred, cells in pics:
                        rec = batch["records"][b]
                        if shown.get(rec.subset, 0) < cfg.overlays_per_subset:
                            shown[rec.subset] = shown.get(rec.subset, 0) + 1
                            overlay_png(out / "overlays" / f"{rec.subset}_{shown[rec.subset]}.png", d.root, rec,
                                        pred.numpy(), cells, model.clip_view, rows_by_id(new).get(rec.id, {}))
            append_rows(shard, rows)
            for r in rows:
                if "inter" in r:
                    meter.add(r["inter"], r["union"])
            bar.update(len(rows))
            bar.set_postfix({k: f"{100 * v:.1f}" for k, v in meter.result().items()} if len(meter) else {})
    bar.close()
    if distributed:
        torch.distributed.barrier()
    if rank != 0:
        return {}
    rows = read_rows(all_files)
    seen, unique = set(), []
    for r in rows:
        if r["id"] not in seen:
            seen.add(r["id"])
            unique.append(r)
    result = aggregate(unique, vocab, cfg.mode, cfg)
    result["problems"] = ds.problems
    write_reports(out, result, vocab)
    if result["n_errors"]:
        print(f"{result['n_errors']} sample(s) could not be scored and are left out of the metrics "
              f"(error rows in {out / 'samples.jsonl'})")
    return result


def rows_by_id(rows: list[dict]) -> dict:
    return {r["id"]: r for r in rows}


@hydra.main(version_base=None, config_path="pkg://sim4seg.configs", config_name="eval")
@user_errors
def main(cfg: DictConfig) -> None:
    res = evaluate(cfg)
    if res:
        o = res["overall"]
        print(json.dumps({k: round(v, 2) if isinstance(v, float) and math.isfinite(v) else v for k, v in o.items()}))


if __name__ == "__main__":
    strip_launcher_args()
    main()
