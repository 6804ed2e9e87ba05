"""What trains: trainable parameter counts per group, printed at the start and kept in run.json."""

from __future__ import annotations

import torch

# (group, substring of the parameter name), first match wins; the rest is "other".
GROUPS = (("lora", "lora_"), ("lm_head", "lm_head"), ("embed_tokens", "embed_tokens"),
          ("phi", "text_hidden_fcs"), ("decoder", "mask_decoder"))


def trainable_groups(model: torch.nn.Module) -> dict[str, int]:
    """Trainable parameters per group (lora, lm_head, embed_tokens, phi, decoder, other), their total and the
    model's size (``all``). Shared tensors (tied weights) count once."""
    counts = {g: 0 for g, _ in GROUPS} | {"other": 0}
    total = 0
    for name, p in model.named_parameters():
        total += p.numel()
        if p.requires_grad:
            counts[next((g for g, key in GROUPS if key in name), "other")] += p.numel()
    return counts | {"total": sum(counts.values()), "all": total}


def describe(counts: dict[str, int]) -> str:
    """One line: ``trainable parameters: lora 8,192, ..., total 123,456 of 2,000,000 (6.2%)``."""
    groups = ", ".join(f"{g} {counts[g]:,}" for g in (*(g for g, _ in GROUPS), "other"))
    return (f"trainable parameters: {groups}; total {counts['total']:,} of {counts['all']:,} "
            f"({100 * counts['total'] / max(counts['all'], 1):.1f}%)")


def full_lm_with_lora(model: torch.nn.Module, lora_enabled: bool) -> str | None:
    """A warning when LoRA is on while ``model.trainable`` also trains the language model's layers in full (the
    adapters would then sit on weights that are trained anyway); None otherwise."""
    n = sum(p.numel() for name, p in model.named_parameters()
            if p.requires_grad and "language_model" in name and ".layers." in name and "lora_" not in name)
    if not lora_enabled or n == 0:
        return None
    return (f"warning: model.lora.enabled=true but model.trainable also trains the full language model ({n:,} "
            "parameters); drop language_model from model.trainable for LoRA fine-tuning, or set "
            "model.lora.enabled=false to train it in full")
