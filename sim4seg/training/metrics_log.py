"""metrics.jsonl (and wandb) as one small object, and the running means of one logging window."""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from sim4seg.jsonl import append_jsonl, atomic_write_text, read_jsonl


class MetricsLog:
    """Appends one JSON record per line to ``path`` on rank 0 (and logs it to wandb when a run is given)."""

    def __init__(self, path: Path, rank: int, wandb_run=None):
        self.path, self.rank, self.wandb_run = path, rank, wandb_run

    @classmethod
    def open(cls, path: Path, rank: int, cfg: DictConfig) -> MetricsLog:
        """The log of a run; wandb (``cfg.wandb``, offline by default) on rank 0 unless disabled."""
        run = None
        if rank == 0 and cfg.wandb.mode != "disabled":
            import wandb

            run = wandb.init(mode=cfg.wandb.mode, project=cfg.wandb.project, name=cfg.wandb.name,
                             dir=cfg.wandb.dir or str(path.parent), config=OmegaConf.to_container(cfg, resolve=True),
                             resume="allow", id=cfg.wandb.name or None)
        return cls(path, rank, run)

    def truncate_after(self, step: int) -> MetricsLog:
        """Keep exactly the records up to ``step`` (the step a resumed run continues from), so that the file of
        a resumed run equals that of an uninterrupted one; a run from step 0 starts a new file."""
        if self.rank == 0 and self.path.exists():
            kept = [r for r in read_jsonl(self.path) if r["step"] <= step and not r.get("final")] if step else []
            atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in kept))
        return self

    def write(self, record: dict) -> None:
        if self.rank == 0:
            append_jsonl(self.path, [record])
            if self.wandb_run is not None:
                self.wandb_run.log(record, step=record["step"])

    def close(self) -> None:
        if self.wandb_run is not None:
            self.wandb_run.finish()


class LossWindow:
    """Means of the loss terms and the throughput since the last logged step."""

    def __init__(self):
        self.reset()

    def reset(self) -> None:
        self.sums: dict[str, float] = {}
        self.n, self.samples, self.tic = 0, 0, time.time()

    def add(self, losses: dict[str, torch.Tensor], samples: int) -> None:
        for k, v in losses.items():
            self.sums[k] = self.sums.get(k, 0.0) + float(v.detach())
        self.n += 1
        self.samples += samples

    def record(self, step: int, epoch: int, lr: float) -> dict:
        """The metrics.jsonl record of the window ending at ``step``; a new window starts."""
        n, s = self.n, self.sums
        rec = {"step": step, "epoch": epoch, "loss": s["total"] / n, "loss_txt": s["txt"] / n,
               "loss_bce": s["bce"] / n, "loss_dice": s["dice"] / n, "lr": lr,
               "samples_per_s": self.samples / max(time.time() - self.tic, 1e-9)}
        if "region" in s:  # loss.region > 0 (ours)
            rec["loss_region"] = s["region"] / n
        self.reset()
        return rec
