"""Process-level setup shared by the entry points: device, DeepSpeed on CPU without JIT builds, distributed
init, seeding, and printing user errors as one line."""

from __future__ import annotations

import functools
import os
import random
import socket
import sys
from collections.abc import Callable

import numpy as np
import torch

from sim4seg.errors import UserError


def strip_launcher_args() -> None:
    """The deepspeed launcher appends ``--local_rank=N``, which Hydra would reject; move it to the environment."""
    keep = []
    args = iter(sys.argv[1:])
    for a in args:
        if a.startswith("--local_rank"):
            value = a.split("=", 1)[1] if "=" in a else next(args)
            os.environ.setdefault("LOCAL_RANK", value)
        else:
            keep.append(a)
    sys.argv[1:] = keep


def device() -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device("cpu")


def init_distributed() -> tuple[int, int]:
    """Initialise torch.distributed through DeepSpeed (nccl on GPU, gloo on CPU); returns (rank, world)."""
    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    import deepspeed
    from deepspeed import ops

    if not torch.cuda.is_available():
        ops.__compatible_ops__["deepspeed_shm_comm"] = False  # avoid a ~1 min JIT build on CPU
    if "MASTER_PORT" not in os.environ:  # a single process without a launcher: any free port will do
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            os.environ["MASTER_PORT"] = str(s.getsockname()[1])
    for k, v in (("MASTER_ADDR", "127.0.0.1"), ("RANK", "0"), ("LOCAL_RANK", "0"), ("WORLD_SIZE", "1")):
        os.environ.setdefault(k, v)
    if torch.cuda.is_available():
        torch.cuda.set_device(device())
    deepspeed.init_distributed(dist_backend="nccl" if torch.cuda.is_available() else "gloo", verbose=False)
    return torch.distributed.get_rank(), torch.distributed.get_world_size()


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict:
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def set_rng_state(s: dict) -> None:
    random.setstate(s["python"])
    np.random.set_state(s["numpy"])
    torch.set_rng_state(s["torch"])
    if s.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(s["cuda"])


def user_errors(fn: Callable) -> Callable:
    """Run an entry point; a :class:`UserError` prints one line on stderr and exits with status 2."""

    @functools.wraps(fn)
    def run(*a, **kw):
        try:
            return fn(*a, **kw)
        except UserError as e:
            print(f"error: {e}", file=sys.stderr)
            sys.exit(2)

    return run
