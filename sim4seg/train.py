"""Training entry point (Hydra + DeepSpeed): composes the config and launches :func:`sim4seg.training.train`.

    python -m sim4seg.train experiment=demo train.max_steps=50
    deepspeed --num_gpus 8 --module sim4seg.train experiment=sim4seg_ft_cot model=lisa_7b model.lvlm.path=...
    torchrun --nproc_per_node 2 -m sim4seg.train ...

Ctrl-C stops with one line naming the checkpoint to continue from (exit status 130).
"""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING

from sim4seg import deps

if TYPE_CHECKING:
    from omegaconf import DictConfig


def run(cfg: DictConfig) -> None:
    from sim4seg.training import train
    from sim4seg.training.run_dir import RunDir

    try:
        train(cfg)
    except KeyboardInterrupt:
        if os.environ.get("RANK", "0") == "0":
            print(RunDir(cfg.train.output_dir).interrupted(), file=sys.stderr)
        sys.exit(130)


def main() -> None:
    deps.launch("train", run, deps.TRAIN, "training")


if __name__ == "__main__":
    main()
