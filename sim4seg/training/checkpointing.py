"""Where a run stands (:class:`TrainState`) and DeepSpeed checkpoints that hold it, written so that an
interrupted write is never resumed from."""

from __future__ import annotations

import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from sim4seg.jsonl import atomic_write_text
from sim4seg.runtime import rng_state, set_rng_state
from sim4seg.training.run_dir import LATEST


@dataclass
class TrainState:
    """Position of a run. ``epoch``/``micro_done``: the next micro-batch is number ``micro_done + 1`` of epoch
    ``epoch`` on every rank. ``skipped``/``skipped_epoch``: samples replaced because their files could not be used,
    summed over ranks, since the start of the run / of the current epoch."""

    step: int = 0
    epoch: int = 0
    micro_done: int = 0
    skipped: int = 0
    skipped_epoch: int = 0


class Checkpointer:
    """Saves and loads DeepSpeed checkpoints of ``engine`` in ``directory`` with the run's :class:`TrainState`
    and every rank's RNG state (so dropout continues exactly). Keeps the newest ``keep``."""

    def __init__(self, directory: Path, engine, rank: int, world: int, keep: int):
        self.dir, self.engine, self.rank, self.world, self.keep = directory, engine, rank, world, keep

    def exists(self) -> bool:
        return (self.dir / LATEST).exists()

    def save(self, state: TrainState) -> None:
        """Collective: every rank calls it. "latest" names the new tag only once every rank has finished writing
        it (an atomic rename)."""
        rngs = [None] * self.world
        torch.distributed.all_gather_object(rngs, rng_state())
        tag = f"step{state.step:08d}"
        self.engine.save_checkpoint(str(self.dir), tag=tag, client_state={**asdict(state), "rng": rngs},
                                    save_latest=False)
        torch.distributed.barrier()
        if self.rank == 0:
            atomic_write_text(self.dir / LATEST, tag)
            tags = sorted(p.name for p in self.dir.glob("step*") if p.is_dir())
            for old in tags[:-self.keep]:
                shutil.rmtree(self.dir / old, ignore_errors=True)
        torch.distributed.barrier()

    def load(self, micro_per_epoch: int) -> TrainState:
        """Restore the engine and this rank's RNG from the latest checkpoint; returns where the run stands.
        Checkpoints written before epoch ends were normalised say ``micro_done == micro_per_epoch``."""
        tag = (self.dir / LATEST).read_text().strip()
        _, client = self.engine.load_checkpoint(str(self.dir), tag=tag)
        set_rng_state(client["rng"][self.rank])
        state = TrainState(**{k: client.get(k, 0) for k in TrainState.__dataclass_fields__})
        if state.micro_done >= micro_per_epoch:
            state.epoch, state.micro_done, state.skipped_epoch = state.epoch + 1, 0, 0
        if self.rank == 0:
            print(f"resumed from {self.dir / tag}: step {state.step}, epoch {state.epoch}")
        return state
