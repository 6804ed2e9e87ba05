"""Validation during training: evaluation's teacher-forced scorer (the ground-truth answer in context, see
:func:`sim4seg.evaluation.rows.teacher_rows`) on the validation split -> gIoU/cIoU."""

from __future__ import annotations

import functools

import torch
from omegaconf import DictConfig
from torch.utils.data import DataLoader

from sim4seg.data.dataset import collate
from sim4seg.evaluation.rows import teacher_rows
from sim4seg.metrics import SegmentationMeter
from sim4seg.model.embedding_cache import EmbeddingCache
from sim4seg.training.batches import make_dataset, model_inputs


def val_loader(cfg: DictConfig, proc, pin_memory: bool) -> DataLoader:
    """The validation split in file order; unusable records are left out (and not scored)."""
    return DataLoader(make_dataset(cfg, cfg.data.val_split, proc), shuffle=False, batch_size=cfg.train.micro_batch,
                      num_workers=cfg.data.num_workers, collate_fn=functools.partial(collate, proc),
                      pin_memory=pin_memory, generator=torch.Generator().manual_seed(cfg.train.seed))


@torch.no_grad()
def validate(engine, loader: DataLoader, dev: torch.device, dtype: torch.dtype, cache: EmbeddingCache | None,
             max_samples: int) -> dict:
    """``val_gIoU``, ``val_cIoU``, ... of the first ``max_samples`` usable samples (at least), scored as
    ``sim4seg.eval mode=teacher`` scores them; rows with non-finite logits are left out."""
    model = engine.module
    model.eval()
    meter, seen = SegmentationMeter(), 0
    for batch in loader:
        if seen >= max_samples:
            break
        if "input_ids" not in batch:  # only unusable records in this batch
            continue
        for row in teacher_rows(model, model_inputs(batch, dev, dtype, cache)):
            if "error" not in row:
                meter.add(row["inter"], row["union"])
        seen += len(batch["ids"])
    model.train()
    return {f"val_{k}": v for k, v in meter.result().items()}
