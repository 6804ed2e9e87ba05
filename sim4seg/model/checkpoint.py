"""Saving and loading trained weights, and rebuilding a trained model from its run directory.

A run directory (``train.output_dir``) holds ``config.yaml`` (the resolved training config),
``trainable.safetensors`` (every parameter that training changed: LoRA, lm_head, embed_tokens, phi, mask
decoder) and, written last, ``finished.json`` (``{"steps_done", "steps_planned"}``): a run is finished iff that
file says every planned step was taken. The frozen rest is rebuilt from the config: pretrained paths, or the
seeded random init of the tiny and demo presets. Only safetensors are read here: nothing is unpickled.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf
from safetensors.torch import load_file, save_file

from sim4seg.errors import UserError
from sim4seg.jsonl import atomic_write_json
from sim4seg.model.builder import build_model
from sim4seg.model.processor import Processor
from sim4seg.model.sim4seg import Sim4Seg

TRAINABLE = "trainable.safetensors"
FINISHED = "finished.json"
RELEASED = "convert-lisa"  # finished.json's source for a converted release: complete weights, no steps here


def write_finished(run_dir: str | Path, steps_done: int, steps_planned: int, source: str | None = None) -> None:
    """Record that training took ``steps_done`` of ``steps_planned`` optimizer steps; the run's last write.
    ``source`` names where complete weights came from without training here (``convert-lisa``: 0 of 0 steps)."""
    record = {"steps_done": int(steps_done), "steps_planned": int(steps_planned)}
    if source is not None:
        record["source"] = source
    atomic_write_json(Path(run_dir) / FINISHED, record, indent=None)


def require_finished(run_dir: str | Path) -> None:
    """Raise a one-line :class:`UserError` unless ``run_dir`` holds a finished training run (``finished.json``
    with steps_done == steps_planned > 0, or a released model written by ``sim4seg convert-lisa``). Evaluation,
    reproduction and prediction call this before loading."""
    path = Path(run_dir) / FINISHED
    resume = f"finish it with `python -m sim4seg.train ... train.output_dir={run_dir} train.resume=true`"
    if not path.exists():
        raise UserError(f"{run_dir}: not a finished training run (no {FINISHED}); {resume}, or pass another "
                        "run directory")
    try:
        record = json.loads(path.read_text())
        done, planned = int(record["steps_done"]), int(record["steps_planned"])
    except (ValueError, KeyError, TypeError):
        raise UserError(f"{path}: unreadable (expected {{\"steps_done\": N, \"steps_planned\": N}}); "
                        f"{resume}") from None
    if record.get("source") == RELEASED and done == planned == 0:
        return
    if planned <= 0 or done != planned:
        raise UserError(f"{run_dir}: training stopped at step {done} of {planned}; {resume}")


def trainable_state(model: Sim4Seg) -> dict[str, torch.Tensor]:
    return {n: p.detach().cpu().contiguous() for n, p in model.named_parameters() if p.requires_grad}


def save_trainable(model: Sim4Seg, path: str | Path) -> None:
    tmp = Path(str(path) + ".tmp")
    # embed_tokens and lm_head may share storage (tied weights); safetensors needs separate tensors.
    save_file({k: v.clone() for k, v in trainable_state(model).items()}, str(tmp))
    tmp.replace(path)


def load_trainable(model: Sim4Seg, path: str | Path) -> None:
    """Load weights saved by :func:`save_trainable`; any missing or unexpected key is an error naming it."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path} not found; ckpt must be a finished run directory (train.output_dir)")
    state = load_file(str(path))
    params = dict(model.named_parameters())
    expected = {n for n, p in params.items() if p.requires_grad}
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - set(params))
    if missing or unexpected:
        raise UserError(f"{path} does not match the model config: missing {missing[:3]}, unexpected "
                        f"{unexpected[:3]} ({len(missing)} missing, {len(unexpected)} unexpected)")
    for name, t in state.items():
        if params[name].shape != t.shape:
            raise UserError(f"{path}: {name} has shape {tuple(t.shape)}, the model config gives "
                            f"{tuple(params[name].shape)}")
        with torch.no_grad():
            params[name].copy_(t)


def load_init(model: Sim4Seg, directory: str | Path) -> int:
    """Start training from a released or exported model (``model.init_from``): its trained weights (phi, mask
    decoder, lm_head, ...) are kept, not re-initialised (LISA's script re-initialised phi and the decoder).
    Fresh LoRA adapters are the only trainable parameters allowed to be missing. Returns the number loaded."""
    path = Path(directory) / TRAINABLE
    if not path.exists():
        raise UserError(f"model.init_from={directory}: {TRAINABLE} not found there; pass a run, export or "
                        "convert-lisa directory")
    state = {_plain(k): v for k, v in load_file(str(path)).items()}
    # peft wraps the LVLM (lvlm.base_model.model.*): compare names without the wrapper, whichever side has it.
    params = {_plain(n): p for n, p in model.named_parameters()}
    unknown = sorted(set(state) - set(params))
    missing = sorted(n for n, p in params.items() if p.requires_grad and n not in state and "lora_" not in n)
    if unknown or missing:
        raise UserError(f"model.init_from={directory} does not match the model config: unexpected {unknown[:3]}, "
                        f"missing {missing[:3]}")
    with torch.no_grad():
        for name, t in state.items():
            params[name].copy_(t)
    return len(state)


def _plain(name: str) -> str:
    return name.replace("lvlm.base_model.model.", "lvlm.", 1)


def resolve_run_paths(cfg: DictConfig, run_dir: str | Path) -> DictConfig:
    """A copy of ``cfg`` in which relative paths that exist inside ``run_dir`` point there: an export names its
    own files (``lvlm/``, ``sam.safetensors``) relative to itself, so it loads from wherever it was moved."""
    cfg = copy.deepcopy(cfg)
    for key in ("model.lvlm.path", "model.sam.checkpoint"):
        value = OmegaConf.select(cfg, key)
        if value and not Path(value).is_absolute() and (Path(run_dir) / value).exists():
            OmegaConf.update(cfg, key, str(Path(run_dir).resolve() / value))
    return cfg


def load_run(ckpt: str | Path, rvls2m: DictConfig | None = None) -> tuple[Sim4Seg, Processor, DictConfig]:
    """Rebuild the model of a run directory with its trained weights. ``rvls2m`` overrides the trained setting
    (e.g. RVLS2M at inference only, paper Table 4)."""
    ckpt = Path(ckpt)
    if not (ckpt / "config.yaml").exists():
        raise UserError(f"ckpt={ckpt}: no config.yaml there; pass a run directory written by sim4seg.train")
    cfg = resolve_run_paths(OmegaConf.load(ckpt / "config.yaml"), ckpt)
    model, proc = build_model(cfg.model, rvls2m if rvls2m is not None else cfg.rvls2m, cfg.loss)
    load_trainable(model, ckpt / TRAINABLE)
    return model, proc, cfg
