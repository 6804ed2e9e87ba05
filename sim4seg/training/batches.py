"""Training batches: a resumable stream of micro-batches over this rank's shard, in which a sample whose files
cannot be used is replaced by another of the same shard (and counted), so every rank takes the same steps."""

from __future__ import annotations

import functools
import math
from collections.abc import Iterator

import torch
from omegaconf import DictConfig
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from sim4seg.data.dataset import M3DSDataset, ResumableSampler, collate
from sim4seg.errors import UserError
from sim4seg.model.embedding_cache import EmbeddingCache
from sim4seg.training.checkpointing import TrainState

MAX_REPLACEMENT_TRIES = 100  # consecutive unusable samples after which the shard is taken as broken


def make_dataset(cfg: DictConfig, split: str, proc, with_answer: bool = True) -> M3DSDataset:
    d = cfg.data
    return M3DSDataset(d.root, split, proc, d.answer_format, d.on_error, d.max_pixels, with_answer,
                       include_subsets=d.include_subsets, exclude_subsets=d.exclude_subsets,
                       include_modalities=d.include_modalities, exclude_modalities=d.exclude_modalities)


def to_device(batch: dict, dev: torch.device, dtype: torch.dtype) -> dict:
    """Tensors to ``dev``; floating inputs (not the masks) to the model ``dtype``."""
    out = {}
    for k, v in batch.items():
        if isinstance(v, torch.Tensor):
            out[k] = v.to(dev, dtype) if v.is_floating_point() and k != "masks" else v.to(dev)
        elif k == "masks":
            out[k] = [m.to(dev) for m in v]
        else:
            out[k] = v
    return out


def model_inputs(batch: dict, dev: torch.device, dtype: torch.dtype, cache: EmbeddingCache | None) -> dict:
    """A collated batch as the model takes it: on ``dev``, SAM embeddings from the cache when one is used."""
    batch = to_device(batch, dev, dtype)
    if cache is not None:
        batch["sam_embeddings"] = cache(batch.pop("sam_images"))
    return batch


class ShardView(Dataset):
    """Position ``p`` of this rank's order for one epoch. An unusable record is replaced by the next usable one
    of the same order (deterministic, so resume stays exact); the sample carries the replaced record's error
    under ``"errors"``."""

    def __init__(self, dataset: M3DSDataset, order: list[int]):
        self.dataset, self.order = dataset, order

    def __len__(self) -> int:
        return len(self.order)

    def __getitem__(self, pos: int) -> dict:
        first = self.dataset[self.order[pos]]
        if "error" not in first:
            return {**first, "errors": []}
        for j in range(1, min(MAX_REPLACEMENT_TRIES, len(self.order))):
            sample = self.dataset[self.order[(pos + j) % len(self.order)]]
            if "error" not in sample:
                return {**sample, "errors": [{**first, "replaced_by": sample["id"]}]}
        raise UserError(f"{first['error']}; and the next {MAX_REPLACEMENT_TRIES - 1} samples of this rank's shard "
                        "cannot be used either: check the data with `sim4seg data check`")


def collate_replaced(proc, samples: list[dict]) -> dict:
    batch = collate(proc, samples)
    batch["errors"] = [e for s in samples for e in s["errors"]]
    return batch


class BatchStream:
    """Micro-batches of this rank's shard from any (epoch, micro-batch) position, epoch after epoch.

    Skips are counted per rank as they come and summed over ranks by :meth:`sync` (a collective every rank calls
    at the same micro-batch); a run whose epoch skips more than ``data.max_skip_fraction`` of its samples stops.
    """

    def __init__(self, dataset: M3DSDataset, proc, cfg: DictConfig, rank: int, world: int, pin_memory: bool):
        t, d = cfg.train, cfg.data
        self.dataset, self.rank, self.world, self.micro_batch = dataset, rank, world, t.micro_batch
        self.max_skip = float(d.max_skip_fraction)
        self.sampler = ResumableSampler([r.subset for r in dataset.records], t.seed, rank, world, d.subset_weights)
        self.per_rank = len(self.sampler)
        self.micro_per_epoch = math.ceil(self.per_rank / t.micro_batch)
        self.loader_kw = {"batch_size": t.micro_batch, "num_workers": d.num_workers, "pin_memory": pin_memory,
                          "collate_fn": functools.partial(collate_replaced, proc), "persistent_workers": False}
        self.seed, self.pending = t.seed, 0

    def batches(self, epoch: int, micro_done: int) -> Iterator[tuple[int, int, dict]]:
        """Yield ``(epoch, micro_done, batch)`` from the micro-batch after ``micro_done`` of ``epoch`` on, where
        ``micro_done`` counts the epoch's micro-batches including this one. Never ends: the loop stops it."""
        while True:
            self.sampler.set_epoch(epoch)
            view = ShardView(self.dataset, self.sampler.order())
            # Its own generator: creating an iterator must not draw from the global RNG, or a run resumed
            # mid-epoch would see other dropout masks than the uninterrupted run.
            loader = DataLoader(view, sampler=range(micro_done * self.micro_batch, len(view)),
                                generator=torch.Generator().manual_seed(self.seed), **self.loader_kw)
            for batch in loader:
                micro_done += 1
                self.pending += len(batch["errors"])
                for e in batch["errors"]:
                    who = f"rank {self.rank}: " if self.world > 1 else ""
                    tqdm.write(f"{who}skipped {e['error']} (replaced by {e['replaced_by']})")
                yield epoch, micro_done, batch
            epoch, micro_done = epoch + 1, 0

    def sync(self, state: TrainState) -> None:
        """Add every rank's new skips to ``state`` (collective); stop when this epoch's skips already exceed
        ``data.max_skip_fraction`` of its samples."""
        n = torch.tensor([self.pending], dtype=torch.long)
        if torch.distributed.get_backend() == "nccl":
            n = n.cuda()
        torch.distributed.all_reduce(n)
        self.pending = 0
        state.skipped += int(n)
        state.skipped_epoch += int(n)
        self.check(state, self.per_rank * self.world)

    def check(self, state: TrainState, samples: int) -> None:
        """Stop when the epoch's skips exceed ``data.max_skip_fraction`` of ``samples`` (its samples, or at the
        end of a run the ones drawn so far)."""
        if state.skipped_epoch > self.max_skip * samples:
            raise UserError(f"{state.skipped_epoch} of {samples} training samples of epoch {state.epoch} could not "
                            f"be used, more than data.max_skip_fraction={self.max_skip:g}; fix the data (`sim4seg "
                            f"data check {self.dataset.root}`) or raise data.max_skip_fraction")

    def drawn(self, state: TrainState) -> int:
        """Samples of the current epoch drawn so far, over all ranks."""
        return min(state.micro_done * self.micro_batch, self.per_rank) * self.world

    def end_epoch(self, state: TrainState) -> dict | None:
        """Collective at an epoch's last micro-batch: sum the skips, report them (one line, and the record for
        metrics.jsonl; None when nothing was skipped), and move ``state`` to the next epoch."""
        self.sync(state)
        problems = len(self.dataset.problems)
        report = None
        if state.skipped or problems:
            if self.rank == 0:
                tqdm.write(f"epoch {state.epoch}: {problems} record(s) unusable in records.jsonl, "
                           f"{state.skipped} sample(s) failed to load so far; all replaced or left out")
            report = {"step": state.step, "epoch_end": state.epoch, "skipped": state.skipped,
                      "skipped_records": problems}
        state.epoch, state.micro_done, state.skipped_epoch = state.epoch + 1, 0, 0
        return report
