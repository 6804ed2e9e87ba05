"""Shared fixtures: one tiny Sim4Seg (random LLaVA + tiny SAM) per session, and synthetic batches."""

from __future__ import annotations

import copy
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import settings

# The CPUs are shared with other test runs: OpenMP worker threads that spin while another process holds the
# core make small-tensor training ~20x slower under load. One intra-op thread keeps the timings stable.
torch.set_num_threads(1)

# In CI the property tests draw the same examples every run: a red CI then means a regression, not bad luck.
settings.register_profile("ci", derandomize=True, deadline=None, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")

REPO = Path(__file__).resolve().parents[1]

# In-process training sets torch.distributed's rendezvous variables in this process; a child inheriting
# MASTER_PORT would try to listen on the port this process already holds (EADDRINUSE).
DIST_VARS = ("MASTER_ADDR", "MASTER_PORT", "RANK", "LOCAL_RANK", "WORLD_SIZE")


# A few quiet steps of the tiny preset: the overrides every quick training fixture shares.
QUICK_TRAIN = ("model=tiny", "train.micro_batch=2", "train.grad_accum=1", "train.warmup_steps=1", "train.eval_every=0",
               "train.save_every=0", "train.progress=false", "wandb.mode=disabled")


def compose_cfg(name: str, overrides: list[str]):
    """``train`` or ``eval`` composed as the entry points compose it (sim4seg.config)."""
    from sim4seg.config import compose

    return compose(name, overrides)


def child_env(**extra: str) -> dict[str, str]:
    """The environment for a subprocess: this one without the rendezvous variables, plus ``extra``."""
    return {k: v for k, v in os.environ.items() if k not in DIST_VARS} | extra

# (subset, label, seed) of small synthetic images with large, learnable lesions.
SPECS = (("SynthDerm", "benign", 0), ("SynthDerm", "malignant", 1), ("SynthUS", "benign", 2),
         ("SynthUS", "malignant", 3))
QUERY = "Please segment the lesion."


def tiny_config(preset: str = "tiny"):
    """The ``model`` config of a preset, composed as the entry points compose it (presets select model/base)."""
    from sim4seg.config import compose

    return compose("train", [f"model={preset}"]).model


@pytest.fixture(scope="session")
def tiny():
    """(model, processor) of the ``tiny`` preset, built once. Tests that change weights must use ``fresh_model``;
    tests that flip settings (train/eval, seg_state, rvls2m) must restore them."""
    from sim4seg.model.builder import build_model

    torch.manual_seed(0)
    return build_model(tiny_config())


@pytest.fixture
def fresh_model(tiny):
    """A private deep copy of the session model, free to train."""
    return copy.deepcopy(tiny[0])


def synthetic(i: int) -> tuple[np.ndarray, np.ndarray]:
    """(RGB uint8 image, bool mask) number ``i`` (cycling through SPECS with new seeds)."""
    from sim4seg.data.synthetic import make_sample

    subset, label, seed = SPECS[i % len(SPECS)]
    image, mask = make_sample(subset, label, seed + 10 * (i // len(SPECS)))
    return image, mask > 0


def make_samples(proc, n: int = 2, answers: str | list[str | None] | None = "It is [SEG].", with_masks: bool = True,
                 query: str | list[str] = QUERY, start: int = 0) -> list[dict]:
    """``n`` processed samples of synthetic images. ``answers`` and ``query``: one for all or one per sample;
    an answer of None makes a prompt-only sample (for generation)."""
    answers = [answers] * n if answers is None or isinstance(answers, str) else answers
    queries = [query] * n if isinstance(query, str) else query
    if len(answers) != n or len(queries) != n:
        raise ValueError(f"make_samples: {n} samples but {len(answers)} answers and {len(queries)} queries")
    out = []
    for i, answer, q in zip(range(start, start + n), answers, queries):
        image, mask = synthetic(i)
        out.append(proc.sample(image, q, answer, mask if with_masks and answer is not None else None, f"syn{i}"))
    return out


@pytest.fixture
def make_batch(tiny):
    """make_batch(n=2, answers=..., with_masks=True, left_pad=False, sam_embeddings=False, ...) -> collated batch.
    With ``sam_embeddings`` the frozen SAM encoder runs once here, so the batch skips it."""
    model, proc = tiny

    def make(n: int = 2, answers="It is [SEG].", with_masks: bool = True, left_pad: bool = False,
             sam_embeddings: bool = False, query: str | list[str] = QUERY, start: int = 0) -> dict:
        batch = proc.collate(make_samples(proc, n, answers, with_masks, query, start), left_pad=left_pad)
        if sam_embeddings:
            with torch.no_grad():
                batch["sam_embeddings"] = model.encode_images(batch.pop("sam_images"))
        return batch

    return make
