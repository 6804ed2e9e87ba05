"""Training entry point (Hydra + DeepSpeed), readable top to bottom.

    python -m sim4seg.train experiment=demo train.max_steps=50
    deepspeed --num_gpus 8 --module sim4seg.train experiment=sim4seg_ft_cot model=lisa_7b model.lvlm.path=...
    torchrun --nproc_per_node 2 -m sim4seg.train ...
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import os
import shutil
import time
from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader
from tqdm import tqdm

from sim4seg.data.dataset import M3DSDataset, ResumableSampler, collate
from sim4seg.errors import UserError
from sim4seg.metrics import SegmentationMeter, mask_counts
from sim4seg.model.builder import build_model
from sim4seg.model.checkpoint import TRAINABLE, load_init, save_trainable
from sim4seg.model.embedding_cache import EmbeddingCache
from sim4seg.runtime import (
    device,
    init_distributed,
    rng_state,
    seed_everything,
    set_rng_state,
    strip_launcher_args,
    user_errors,
)

LATEST = "latest"


def model_fingerprint(cfg: DictConfig) -> str:
    """What a checkpoint's weights depend on; a resume with another value is refused."""
    keys = {k: OmegaConf.to_container(cfg[k], resolve=True) for k in ("model", "rvls2m")}
    return hashlib.sha256(json.dumps(keys, sort_keys=True).encode()).hexdigest()[:16]


def dataset(cfg: DictConfig, split: str, proc, with_answer: bool = True) -> M3DSDataset:
    d = cfg.data
    return M3DSDataset(d.root, split, proc, d.answer_format, d.on_error, d.max_pixels, with_answer,
                       include_subsets=d.include_subsets, exclude_subsets=d.exclude_subsets,
                       include_modalities=d.include_modalities, exclude_modalities=d.exclude_modalities)


def ds_config(cfg: DictConfig, world: int, total_steps: int) -> dict:
    t = cfg.train
    return {
        "train_micro_batch_size_per_gpu": t.micro_batch,
        "gradient_accumulation_steps": t.grad_accum,
        "train_batch_size": t.micro_batch * t.grad_accum * world,
        "gradient_clipping": t.grad_clip,
        "zero_optimization": {"stage": cfg.deepspeed.zero_stage},
        "bf16": {"enabled": bool(cfg.deepspeed.bf16 and torch.cuda.is_available())},
        "scheduler": {"type": "WarmupDecayLR",
                      "params": {"total_num_steps": max(total_steps, t.warmup_steps + 1), "warmup_min_lr": 0.0,
                                 "warmup_max_lr": t.lr, "warmup_num_steps": t.warmup_steps, "warmup_type": "linear"}},
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }


def prepare_run_dir(cfg: DictConfig, rank: int) -> Path:
    """Refuse to mix runs: an output dir with checkpoints is only reused by ``train.resume=true`` with the same
    model config."""
    out = Path(cfg.train.output_dir)
    ckpt = out / "checkpoints"
    meta = out / "run.json"
    fp = model_fingerprint(cfg)
    if (ckpt / LATEST).exists():
        if not cfg.train.resume:
            raise UserError(f"{out} already holds checkpoints; set train.resume=true to continue that run or "
                            "choose another train.output_dir")
        saved = json.loads(meta.read_text()).get("model_fingerprint") if meta.exists() else None
        if saved != fp:
            raise UserError(f"{out} holds checkpoints of a run with a different model/rvls2m config; "
                            "resume with the same config or choose another train.output_dir")
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        meta.write_text(json.dumps({"model_fingerprint": fp}))
        (out / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    return out


def save_checkpoint(engine, ckpt_dir: Path, step: int, state: dict, keep: int, rank: int) -> None:
    """DeepSpeed checkpoint, made "latest" only once every rank has finished writing it (an atomic rename), so
    an interrupted write is never resumed from."""
    tag = f"step{step:08d}"
    engine.save_checkpoint(str(ckpt_dir), tag=tag, client_state=state, save_latest=False)
    torch.distributed.barrier()
    if rank == 0:
        tmp = ckpt_dir / f".{LATEST}.tmp"
        tmp.write_text(tag)
        os.replace(tmp, ckpt_dir / LATEST)
        tags = sorted(p.name for p in ckpt_dir.glob("step*") if p.is_dir())
        for old in tags[:-keep]:
            shutil.rmtree(ckpt_dir / old, ignore_errors=True)
    torch.distributed.barrier()


def to_device(batch: dict, dev: torch.device, dtype: torch.dtype) -> dict:
    out = {}
    for k, v in batch.items():
        if isinstance(v, torch.Tensor):
            out[k] = v.to(dev, dtype) if v.is_floating_point() and k != "masks" else v.to(dev)
        elif k == "masks":
            out[k] = [m.to(dev) for m in v]
        else:
            out[k] = v
    return out


@torch.no_grad()
def validate(engine, loader: DataLoader, dev, dtype, cache: EmbeddingCache | None, max_samples: int) -> dict:
    """LISA-style validation: teacher-forced masks from the ground-truth answer's [SEG]; gIoU/cIoU."""
    model = engine.module
    model.eval()
    meter, seen = SegmentationMeter(), 0
    for batch in loader:
        if seen >= max_samples:
            break
        if "input_ids" not in batch:  # only bad records in this batch
            continue
        batch = to_device(batch, dev, dtype)
        if cache is not None:
            batch["sam_embeddings"] = cache(batch.pop("sam_images"))
        out = model(batch)
        for dec, gt in zip(out.masks, batch["masks"]):
            if dec.logits.shape[0]:
                c = mask_counts(list(dec.logits > 0), list(gt > 0.5))
                meter.add(c[:, 0], c[:, 1])
        seen += len(batch["ids"])
    model.train()
    return {f"val_{k}": v for k, v in meter.result().items()}


def train(cfg: DictConfig) -> dict:
    import deepspeed  # after init_distributed has chosen the accelerator

    rank, world = init_distributed()
    t = cfg.train
    out = prepare_run_dir(cfg, rank)
    ckpt_dir = out / "checkpoints"
    seed_everything(t.seed)
    dev = device()
    dtype = torch.bfloat16 if cfg.deepspeed.bf16 and torch.cuda.is_available() else torch.float32

    model, proc = build_model(cfg.model, cfg.rvls2m, cfg.loss)
    if cfg.model.get("init_from"):
        load_init(model, cfg.model.init_from)
    train_set = dataset(cfg, cfg.data.train_split, proc)
    if rank == 0:
        for problem in train_set.problems:  # records.jsonl lines that cannot be used at all
            print(f"skipped {problem}")
    sampler = ResumableSampler([r.subset for r in train_set.records], t.seed, rank, world, cfg.data.subset_weights)
    loader_kw = {"batch_size": t.micro_batch, "num_workers": cfg.data.num_workers,
                 "collate_fn": functools.partial(collate, proc), "pin_memory": dev.type == "cuda",
                 "persistent_workers": False,
                 # Its own generator: creating an iterator must not draw from the global RNG, or a run resumed
                 # mid-epoch would see other dropout masks than the uninterrupted run.
                 "generator": torch.Generator().manual_seed(t.seed)}
    loader = DataLoader(train_set, sampler=sampler, **loader_kw)
    val_loader = None
    if t.eval_every:
        val_set = dataset(cfg, cfg.data.val_split, proc)
        val_loader = DataLoader(val_set, shuffle=False, **loader_kw)

    micro_per_epoch = math.ceil(len(sampler) / t.micro_batch)
    steps_per_epoch = max(1, micro_per_epoch // t.grad_accum)
    total_steps = steps_per_epoch * t.epochs if t.max_steps is None else min(t.max_steps, steps_per_epoch * t.epochs)
    params = [p for p in model.parameters() if p.requires_grad]
    # A client AdamW keeps DeepSpeed from JIT-building fused_adam on CPU; fused kernels on GPU.
    opt = torch.optim.AdamW(params, lr=t.lr, betas=tuple(t.betas), weight_decay=t.weight_decay,
                            fused=dev.type == "cuda")
    engine, _, _, scheduler = deepspeed.initialize(model=model, optimizer=opt, model_parameters=params,
                                                   config=ds_config(cfg, world, total_steps))
    # DeepSpeed's bf16 casts every weight; SAM's frozen prompt encoder must stay fp32 (see builder).
    engine.module.sam.prompt_encoder.float()
    cache = EmbeddingCache(t.cache_dir, engine.module.sam.image_encoder) if t.cache_sam_embeddings else None

    step, epoch, micro_done = 0, 0, 0
    if t.resume and (ckpt_dir / LATEST).exists():
        tag = (ckpt_dir / LATEST).read_text().strip()
        _, client = engine.load_checkpoint(str(ckpt_dir), tag=tag)
        step, epoch, micro_done = client["step"], client["epoch"], client["micro_done"]
        set_rng_state(client["rng"][rank])
        if rank == 0:
            print(f"resumed from {ckpt_dir / tag}: step {step}, epoch {epoch}")

    wandb_run = None
    if rank == 0 and cfg.wandb.mode != "disabled":
        import wandb

        wandb_run = wandb.init(mode=cfg.wandb.mode, project=cfg.wandb.project, name=cfg.wandb.name,
                               dir=cfg.wandb.dir or str(out), config=OmegaConf.to_container(cfg, resolve=True),
                               resume="allow", id=cfg.wandb.name or None)
    log_path = out / "metrics.jsonl"
    if rank == 0 and log_path.exists():  # keep exactly the records up to the step we continue from
        kept = [x for x in log_path.read_text().splitlines() if x and json.loads(x)["step"] <= step
                and not json.loads(x).get("final")] if step else []
        log_path.write_text("".join(k + "\n" for k in kept))

    def log(record: dict) -> None:
        if rank == 0:
            with open(log_path, "a") as f:
                f.write(json.dumps(record) + "\n")
            if wandb_run is not None:
                wandb_run.log(record, step=record["step"])

    def checkpoint() -> None:
        rngs = [None] * world
        torch.distributed.all_gather_object(rngs, rng_state())
        save_checkpoint(engine, ckpt_dir, step, {"step": step, "epoch": epoch, "micro_done": micro_done,
                                                 "rng": rngs}, t.keep_checkpoints, rank)

    def end_of_epoch() -> None:
        nonlocal epoch, micro_done
        if skipped or train_set.problems:
            if rank == 0:
                tqdm.write(f"epoch {epoch}: {len(train_set.problems)} record(s) unusable in records.jsonl, "
                           f"{skipped} sample(s) failed to load so far; all skipped")
            log({"step": step, "epoch_end": epoch, "skipped": skipped, "skipped_records": len(train_set.problems)})
        epoch, micro_done = epoch + 1, 0

    engine.train()
    bar = tqdm(total=total_steps, initial=step, desc="train", disable=rank != 0 or not t.progress)
    sums, n_acc, skipped, tic, samples = {}, 0, 0, time.time(), 0
    while step < total_steps and epoch < t.epochs:
        sampler.set_epoch(epoch, micro_done * t.micro_batch)
        for batch in loader:
            micro_done += 1
            skipped += len(batch["errors"])
            for e in batch["errors"]:
                tqdm.write(f"skipped {e['error']}") if rank == 0 else None
            if "input_ids" not in batch:  # every sample of this micro-batch was bad: nothing to learn from
                continue
            batch = to_device(batch, dev, dtype)
            if cache is not None:
                batch["sam_embeddings"] = cache(batch.pop("sam_images"))
            losses = engine(batch).losses
            engine.backward(losses["total"])
            at_boundary = engine.is_gradient_accumulation_boundary()
            engine.step()
            for k, v in losses.items():
                sums[k] = sums.get(k, 0.0) + float(v.detach())
            n_acc += 1
            samples += len(batch["ids"]) * world
            if not at_boundary:
                continue
            step += 1
            bar.update(1)
            if step % t.log_every == 0 or step == total_steps:
                elapsed = time.time() - tic
                rec = {"step": step, "epoch": epoch, "loss": sums["total"] / n_acc, "loss_txt": sums["txt"] / n_acc,
                       "loss_bce": sums["bce"] / n_acc, "loss_dice": sums["dice"] / n_acc,
                       "lr": scheduler.get_last_lr()[0] if scheduler else t.lr,
                       "samples_per_s": samples / max(elapsed, 1e-9), "skipped": skipped,
                       "skipped_records": len(train_set.problems)}
                if dev.type == "cuda":
                    rec["peak_mem_gb"] = torch.cuda.max_memory_allocated(dev) / 2**30
                log(rec)
                bar.set_postfix(loss=f"{rec['loss']:.3f}")
                sums, n_acc, tic, samples = {}, 0, time.time(), 0
            if val_loader is not None and t.eval_every and step % t.eval_every == 0:
                log({"step": step, **validate(engine, val_loader, dev, dtype, cache, t.eval_max_samples)})
            if t.save_every and step % t.save_every == 0 and step < total_steps:
                checkpoint()
            if step >= total_steps:
                break
        else:
            end_of_epoch()
            continue
        if micro_done == micro_per_epoch:  # the last step was also the epoch's last micro-batch
            end_of_epoch()
        break
    bar.close()
    checkpoint()
    if cfg.deepspeed.zero_stage == 3:  # parameters are partitioned: gather them for the export
        with deepspeed.zero.GatheredParameters(list(engine.module.parameters())):
            if rank == 0:
                save_trainable(engine.module, out / TRAINABLE)
    elif rank == 0:
        save_trainable(engine.module, out / TRAINABLE)
    final = {"step": step, "skipped": skipped, "skipped_records": len(train_set.problems)}
    if val_loader is not None:
        final.update(validate(engine, val_loader, dev, dtype, cache, t.eval_max_samples))
    log({**final, "final": True})
    if wandb_run is not None:
        wandb_run.finish()
    return final


@hydra.main(version_base=None, config_path="pkg://sim4seg.configs", config_name="train")
@user_errors
def main(cfg: DictConfig) -> None:
    train(cfg)


if __name__ == "__main__":
    strip_launcher_args()
    main()
