"""The optimizer, the DeepSpeed config and engine: built here once for training, the benchmarks and the GPU
check (as nanoGPT's ``configure_optimizers``)."""

from __future__ import annotations

import torch
from omegaconf import DictConfig


def build_optimizer(params: list[torch.nn.Parameter], train_cfg: DictConfig, device: torch.device
                    ) -> torch.optim.AdamW:
    """AdamW with the run's settings (paper Sec. 4.1). A client optimizer keeps DeepSpeed from JIT-building
    fused_adam on the CPU; torch's fused kernel on the GPU."""
    t = train_cfg
    return torch.optim.AdamW(params, lr=t.lr, betas=tuple(t.betas), weight_decay=t.weight_decay,
                             fused=device.type == "cuda")


def deepspeed_config(cfg: DictConfig, world: int, total_steps: int) -> dict:
    """DeepSpeed's config of a run: batch sizes, clipping, ZeRO stage, bf16 (GPU only), warm-up/decay schedule."""
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


def initialize(model: torch.nn.Module, cfg: DictConfig, world: int, total_steps: int, device: torch.device):
    """``deepspeed.initialize`` with :func:`build_optimizer` and :func:`deepspeed_config`; returns
    ``(engine, lr_scheduler)``. Call after :func:`sim4seg.runtime.init_distributed`."""
    import deepspeed

    params = [p for p in model.parameters() if p.requires_grad]
    engine, _, _, scheduler = deepspeed.initialize(model=model, optimizer=build_optimizer(params, cfg.train, device),
                                                   model_parameters=params,
                                                   config=deepspeed_config(cfg, world, total_steps))
    keep_prompt_encoder_fp32(engine)
    return engine, scheduler


def keep_prompt_encoder_fp32(engine) -> None:
    """DeepSpeed's bf16 engine casts every weight; SAM's frozen prompt encoder must stay fp32 (its random positional
    encoding is not bf16-safe and RVLS2M's mask prompt is fp32; see the builder). Frozen: not in the optimizer."""
    engine.module.sam.prompt_encoder.float()
