"""One evaluation: per-subset gIoU / cIoU / Dice / Acc of a finished run, resumable, in the paper's layouts.

Every sample becomes one line of ``OUT/samples.jsonl`` as soon as it is scored; ``metrics.json`` / ``metrics.md``
are always recomputed from all lines. A rerun into the same ``out`` resumes only the same evaluation
(:mod:`sim4seg.evaluation.fingerprint`); anything else is refused unless ``overwrite=true``. Samples are
sharded over ranks (one shard file each) and merged on rank 0.

Generation budget: ``max_new_tokens: null`` derives it from the data (:func:`generation_budget`). An explicit
value is used as given (short budgets for smoke runs and budget sweeps), with a warning when it is below the
derived one; either way ``metrics.json`` records the budget used and counts the answers it cut (``truncated``).
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader, Subset
from tqdm import tqdm

from sim4seg.data.dataset import M3DSDataset, collate
from sim4seg.data.prompts import record_answer
from sim4seg.data.schema import RecordError, iter_records
from sim4seg.errors import UserError
from sim4seg.evaluation import fingerprint, tts
from sim4seg.evaluation.figures import overlay_png
from sim4seg.evaluation.report import aggregate, write_reports
from sim4seg.evaluation.rows import generate_rows, teacher_rows
from sim4seg.jsonl import append_jsonl, read_jsonl
from sim4seg.metrics import SegmentationMeter
from sim4seg.model.checkpoint import load_run, require_finished
from sim4seg.model.embedding_cache import EmbeddingCache
from sim4seg.runtime import device, init_distributed

BUDGET_MARGIN = 64  # tokens beyond the longest reference answer: room for a model that words it longer
COT_MIN_BUDGET = 384  # CoT answers run to ~256 tokens after "It is [SEG]. " (data/cot); never cut them shorter
CACHE_SUBDIR = "sam_embedding_cache"  # cache_dir: auto -> <ckpt>/sam_embedding_cache


def generation_budget(root: str | Path, proc, answer_format: str) -> int:
    """max_new_tokens derived from the data: the longest answer, in the run's answer format and tokens (EOS
    included), over every record of ``root`` (so at least the longest training answer) plus
    :data:`BUDGET_MARGIN`; at least :data:`COT_MIN_BUDGET` for CoT answers."""
    probe = "?"  # the answer's tokens do not depend on the query: it follows the prompt's fixed "ASSISTANT:"
    base = len(proc.tokens(probe)[0])
    longest = 0
    for answer in {record_answer(answer_format, r) for _, r in iter_records(root) if not isinstance(r, RecordError)
                   } - {None}:
        try:
            longest = max(longest, len(proc.tokens(probe, answer)[0]) - base)
        except ValueError:  # longer than the context: that record is refused when it is loaded
            continue
    return max(longest + BUDGET_MARGIN, COT_MIN_BUDGET if answer_format == "cot" else 0)


def embedding_cache(cfg: DictConfig, encoder: torch.nn.Module) -> EmbeddingCache | None:
    """``cache_dir``: ``auto`` (``<ckpt>/sam_embedding_cache``: every evaluation of this checkpoint reuses the
    test images' SAM embeddings), a folder (entries are keyed by the encoder's weights, so one folder can serve
    many runs), or null (no cache)."""
    if not cfg.cache_dir:
        return None
    where = Path(cfg.ckpt) / CACHE_SUBDIR if cfg.cache_dir == "auto" else Path(cfg.cache_dir)
    try:
        return EmbeddingCache(where, encoder, cfg.cache_dtype)
    except OSError as e:
        raise UserError(f"cache_dir={cfg.cache_dir}: cannot write {where} ({e.strerror}); set cache_dir=DIR to a "
                        "writable folder or cache_dir=null") from None


def read_rows(out: Path) -> list[dict]:
    """Rows of every shard of ``out`` (samples.jsonl and samples.rankN.jsonl)."""
    return [r for p in [out / "samples.jsonl", *sorted(out.glob("samples.rank*.jsonl"))] for r in read_jsonl(p)]


def check_settings(cfg: DictConfig) -> None:
    if cfg.mode not in ("generate", "teacher"):
        raise UserError(f"mode={cfg.mode!r}: use generate or teacher")
    if cfg.tts.select_mask not in tts.MASK_SELECTIONS or cfg.tts.select_diagnosis not in tts.DIAGNOSIS_SELECTIONS:
        raise UserError(f"tts.select_mask must be one of {tts.MASK_SELECTIONS} and tts.select_diagnosis one of "
                        f"{tts.DIAGNOSIS_SELECTIONS}")
    if not (cfg.tts.temperature > 0 and 0 < cfg.tts.top_p <= 1):
        raise UserError(f"tts.temperature={cfg.tts.temperature}, tts.top_p={cfg.tts.top_p}: need temperature > 0 "
                        "and 0 < top_p <= 1")
    if cfg.max_new_tokens is not None and int(cfg.max_new_tokens) < 1:
        raise UserError(f"max_new_tokens={cfg.max_new_tokens}: use a positive number, or null to derive it")
    if not cfg.ckpt:
        raise UserError("set ckpt=RUN_DIR (a directory written by sim4seg.train)")
    if not Path(cfg.ckpt).is_dir():
        raise UserError(f"ckpt={cfg.ckpt}: no such directory; pass a run directory written by sim4seg.train")


def evaluate(cfg: DictConfig) -> dict:
    check_settings(cfg)
    require_finished(cfg.ckpt)
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    rank, world = init_distributed() if distributed else (0, 1)
    dev = device()
    torch.manual_seed(cfg.seed)
    model, proc, train_cfg = load_run(cfg.ckpt, cfg.get("rvls2m"))
    model.to(dev).eval()
    answer_format = train_cfg.data.answer_format
    # How the diagnosis span is found follows the trained answer format ("seg" answers carry none: auto).
    fmt = answer_format if answer_format in ("cot", "diagnosis") else "auto"
    d = cfg.data
    ds = M3DSDataset(d.root, cfg.split, proc, answer_format, d.on_error, d.max_pixels,
                     with_answer=cfg.mode == "teacher", include_subsets=d.include_subsets,
                     exclude_subsets=d.exclude_subsets, include_modalities=d.include_modalities,
                     exclude_modalities=d.exclude_modalities)
    budget = None
    if cfg.mode == "generate":
        derived = generation_budget(d.root, proc, answer_format)
        budget = derived if cfg.max_new_tokens is None else int(cfg.max_new_tokens)
        if budget < derived and rank == 0:
            print(f"warning: max_new_tokens={budget} is below the {derived} tokens the data's answers need; "
                  "cut answers are counted as truncated (max_new_tokens=null derives the budget)")
    cfg = OmegaConf.merge(cfg, {"max_new_tokens": budget})  # what generation uses and the fingerprint records
    out = Path(cfg.out)
    (out / "overlays").mkdir(parents=True, exist_ok=True)
    if rank == 0:
        fingerprint.claim(out, fingerprint.fingerprint(cfg, ds, budget), bool(cfg.get("overwrite", False)))
    if distributed:
        torch.distributed.barrier()  # no rank reads rows before rank 0 has claimed (or cleared) the folder

    shard = out / ("samples.jsonl" if world == 1 else f"samples.rank{rank}.jsonl")
    done = {r["id"] for r in read_rows(out)}
    if rank == 0:  # records.jsonl lines that cannot be used at all become error rows too (id = file:line)
        append_jsonl(shard, [{"id": p.split(": ", 1)[0], "subset": None, "error": p} for p in ds.problems
                             if p.split(": ", 1)[0] not in done])
    todo = [i for i in range(len(ds)) if i % world == rank and ds.records[i].id not in done]
    if cfg.max_samples:
        todo = todo[: max(0, cfg.max_samples - len(done))]
    loader = DataLoader(Subset(ds, todo), batch_size=cfg.batch_size, num_workers=d.num_workers,
                        collate_fn=functools.partial(collate, proc, left_pad=cfg.mode == "generate"))
    cache = embedding_cache(cfg, model.sam.image_encoder)
    shown = {s: len(list((out / "overlays").glob(f"{s}_*.png"))) for s in ds.vocab}
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
                    rows += teacher_rows(model, batch)
                else:
                    new, pics = generate_rows(model, proc, batch, cfg, ds.vocab, fmt)
                    rows += new
                    by_id = {r["id"]: r for r in new}
                    for b, pred, cells in pics:
                        rec = batch["records"][b]
                        if shown.get(rec.subset, 0) < cfg.overlays_per_subset:
                            shown[rec.subset] = shown.get(rec.subset, 0) + 1
                            overlay_png(out / "overlays" / f"{rec.subset}_{shown[rec.subset]}.png", d.root, rec,
                                        pred.numpy(), cells, model.clip_view, by_id[rec.id])
            append_jsonl(shard, rows)
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
    seen, unique = set(), []
    for r in read_rows(out):  # every rank's shard, as written by now
        if r["id"] not in seen:
            seen.add(r["id"])
            unique.append(r)
    result = aggregate(unique, ds.vocab, cfg.mode, cfg, budget)
    result["problems"] = ds.problems
    write_reports(out, result, ds.vocab)
    if result["n_errors"]:
        print(f"{result['n_errors']} sample(s) could not be scored and are left out of the metrics "
              f"(error rows in {out / 'samples.jsonl'})")
    return result
