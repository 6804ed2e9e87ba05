"""The one place that composes Hydra configs. Configs are package data (``sim4seg/configs``), as in sam2, so
entry points work from an installed wheel and from any working directory."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from hydra import compose as _compose
from hydra import initialize_config_module
from omegaconf import DictConfig

CONFIG_MODULE = "sim4seg.configs"
CONFIG_DIR = Path(__file__).resolve().parent / "configs"  # for reading single YAML files (e.g. a model preset)


def compose(name: str, overrides: Sequence[str] = ()) -> DictConfig:
    """``name`` (``train`` or ``eval``) with command-line style ``overrides``, as the entry points see it."""
    with initialize_config_module(config_module=CONFIG_MODULE, version_base=None):
        return _compose(name, overrides=list(overrides))
