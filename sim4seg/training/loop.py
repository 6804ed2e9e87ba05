"""The training loop: setup, then one flat loop over micro-batches in commented sections (as nanoGPT's
``train.py``), then the final writes. ``finished.json`` is the last file a run writes."""

from __future__ import annotations

import torch
from omegaconf import DictConfig
from tqdm import tqdm

from sim4seg.model.builder import build_model
from sim4seg.model.checkpoint import TRAINABLE, load_init, save_trainable, write_finished
from sim4seg.model.embedding_cache import training_cache
from sim4seg.runtime import device, init_distributed, seed_everything
from sim4seg.training.batches import BatchStream, make_dataset, model_inputs
from sim4seg.training.checkpointing import Checkpointer, TrainState
from sim4seg.training.checks import check_records, check_settings, planned_steps
from sim4seg.training.metrics_log import LossWindow, MetricsLog
from sim4seg.training.optim import initialize
from sim4seg.training.params import describe, full_lm_with_lora, trainable_groups
from sim4seg.training.run_dir import RunDir
from sim4seg.training.validation import val_loader, validate


def train(cfg: DictConfig) -> dict:
    """Train into ``cfg.train.output_dir`` (resuming with ``train.resume=true``); returns the final record."""
    # -- checks that need no model (a refused run writes nothing), then the ranks and the run directory
    check_settings(cfg)
    check_records(cfg)
    rank, world = init_distributed()
    import deepspeed  # after init_distributed has chosen the accelerator

    t = cfg.train
    run = RunDir(t.output_dir)
    changes = run.prepare(cfg, rank)
    seed_everything(t.seed)
    dev = device()
    dtype = torch.bfloat16 if cfg.deepspeed.bf16 and torch.cuda.is_available() else torch.float32

    # -- model: what trains is printed and kept in run.json
    model, proc = build_model(cfg.model, cfg.rvls2m, cfg.loss)
    if cfg.model.get("init_from"):
        load_init(model, cfg.model.init_from)
    groups = trainable_groups(model)
    warning = full_lm_with_lora(model, cfg.model.lora.enabled)
    if rank == 0:
        print(describe(groups))
        if warning:
            print(warning)
        run.write_meta({"trainable_params": groups, "world_size": world})

    # -- data, optimizer, engine
    train_set = make_dataset(cfg, cfg.data.train_split, proc)
    if rank == 0:
        for problem in train_set.problems:  # records.jsonl lines that cannot be used at all
            print(f"skipped {problem}")
    stream = BatchStream(train_set, proc, cfg, rank, world, pin_memory=dev.type == "cuda")
    total_steps = planned_steps(stream.micro_per_epoch, t, world)
    val = val_loader(cfg, proc, dev.type == "cuda") if t.eval_every else None
    engine, scheduler = initialize(model, cfg, world, total_steps, dev)
    cache = (training_cache(t.cache_dir, engine.module.sam.image_encoder, t.cache_dtype, rank == 0)
             if t.cache_sam_embeddings else None)
    ckpt = Checkpointer(run.checkpoints, engine, rank, world, t.keep_checkpoints)
    state = ckpt.load(stream.micro_per_epoch) if t.resume and ckpt.exists() else TrainState()
    if changes and rank == 0:
        run.record_changes(state.step, changes)
    log = MetricsLog.open(run.metrics, rank, cfg).truncate_after(state.step)

    # -- the loop: one micro-batch per iteration; DeepSpeed steps the optimizer every grad_accum of them
    engine.train()
    window = LossWindow()
    batches = stream.batches(state.epoch, state.micro_done)
    bar = tqdm(total=total_steps, initial=state.step, desc="train", disable=rank != 0 or not t.progress)
    while state.step < total_steps:
        # forward, backward, (optimizer step)
        state.epoch, state.micro_done, batch = next(batches)
        losses = engine(model_inputs(batch, dev, dtype, cache)).losses
        engine.backward(losses["total"])
        boundary = engine.is_gradient_accumulation_boundary()
        engine.step()
        window.add(losses, len(batch["ids"]) * world)

        # an optimizer step was taken: count it, sum the skips of every rank, log
        if boundary:
            state.step += 1
            bar.update(1)
            stream.sync(state)
            if state.step % t.log_every == 0 or state.step == total_steps:
                rec = window.record(state.step, state.epoch, scheduler.get_last_lr()[0] if scheduler else t.lr)
                rec.update(skipped=state.skipped, skipped_records=len(train_set.problems))
                if dev.type == "cuda":
                    rec["peak_mem_gb"] = torch.cuda.max_memory_allocated(dev) / 2**30
                log.write(rec)
                bar.set_postfix(loss=f"{rec['loss']:.3f}")

        # the epoch's last micro-batch: the stream reports its skips and moves to the next epoch
        if state.micro_done == stream.micro_per_epoch:
            report = stream.end_epoch(state)
            if report:
                log.write(report)

        # validation and checkpoint (the last one is written after the loop)
        if boundary and val is not None and state.step % t.eval_every == 0:
            log.write({"step": state.step, **validate(engine, val, dev, dtype, cache, t.eval_max_samples)})
        if boundary and t.save_every and state.step % t.save_every == 0 and state.step < total_steps:
            ckpt.save(state)
    bar.close()

    # -- the end: checkpoint, the skip limit over what this epoch drew, weights, final record, finished.json
    ckpt.save(state)
    stream.check(state, stream.drawn(state))
    if cfg.deepspeed.zero_stage == 3:  # parameters are partitioned: gather them for the export
        with deepspeed.zero.GatheredParameters(list(engine.module.parameters())):
            if rank == 0:
                save_trainable(engine.module, run.path / TRAINABLE)
    elif rank == 0:
        save_trainable(engine.module, run.path / TRAINABLE)
    final = {"step": state.step, "skipped": state.skipped, "skipped_records": len(train_set.problems)}
    if val is not None:
        final.update(validate(engine, val, dev, dtype, cache, t.eval_max_samples))
    log.write({**final, "final": True})
    log.close()
    if rank == 0:
        write_finished(run.path, state.step, total_steps)
    return final
