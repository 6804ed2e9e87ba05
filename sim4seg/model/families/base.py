"""The interface every LVLM family implements (see :mod:`sim4seg.model.families`)."""

from __future__ import annotations

import json
import re
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from omegaconf import DictConfig
from transformers import AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from sim4seg.errors import UserError
from sim4seg.model.quantize import load_kwargs
from sim4seg.model.tokens import SEG_TOKEN

LANGUAGE_MODEL = "model.language_model"  # both families: where LoRA goes (never the vision tower)
HEAD_NAMES = ("lm_head", "model.language_model.embed_tokens")  # both families: trained in full, as in LISA
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class ImageInputs:
    """One image as the LVLM takes it.

    pixel_values: LLaVA [3, s, s]; Qwen2.5-VL [N, 3 * 2 * 14 * 14], its processor's flattened 14-px patches
    (N = t h w, each 2 x 2 block of patches contiguous, blocks row-major). grid_thw: Qwen2.5-VL's (t, h, w) [3] in
    patches, else None. n_tokens: image tokens in the LVLM's sequence. token_grid: the (rows, cols) those tokens
    form, row-major (Qwen2.5-VL: (h / 2, w / 2) after the 2 x 2 merge), or None for a CLIP tower's square grid
    (RVLS2M's Eq. 6 lays those out).
    """

    pixel_values: torch.Tensor
    n_tokens: int
    grid_thw: torch.Tensor | None = None
    token_grid: tuple[int, int] | None = None


class ImageView(ABC):
    """How a built LVLM sees an image (the Processor's image side). ``clip_view`` is ``model.clip_view``, the
    geometry RVLS2M places its cells with (:func:`sim4seg.model.rvls2m.view_box`)."""

    image_processor: Any
    clip_view: str
    fixed_tokens: int | None  # image tokens of every image, or None when they depend on its size

    @abstractmethod
    def __call__(self, image: np.ndarray) -> ImageInputs:
        """RGB uint8 [H, W, 3] -> the LVLM's inputs for it"""

    @abstractmethod
    def n_tokens(self, hw: tuple[int, int] | None) -> int:
        """Image tokens of an H x W image, without decoding it (``None``: the most any image gets)."""


class LVLMFamily(ABC):
    """One LVLM family. Subclasses set the class attributes and build tokenizer, model and view."""

    name: ClassVar[str]  # model.lvlm.family
    model_type: ClassVar[str]  # config.json "model_type" of its checkpoints
    architecture: ClassVar[str]  # the transformers class
    image_token: ClassVar[str]  # the placeholder its prompts hold, repeated once per image token
    views: ClassVar[tuple[str, ...]]  # the model.clip_view values it can show
    prompt_formats: ClassVar[tuple[str, ...]]  # the model.prompt_format values its prompts can use
    preset: ClassVar[str]  # the local-directory preset of the family, for messages

    @abstractmethod
    def random_tokenizer(self) -> PreTrainedTokenizerBase:
        """The offline tokenizer of its random-init presets."""

    @abstractmethod
    def random_lvlm(self, cfg: DictConfig, tok: PreTrainedTokenizerBase) -> PreTrainedModel:
        """A random-init model of the preset's sizes (``model.lvlm.vision`` / ``text``), seeded by ``init_seed``."""

    @abstractmethod
    def model_class(self) -> type[PreTrainedModel]:
        """The transformers class its local directories load with."""

    @abstractmethod
    def set_image_token(self, model: PreTrainedModel, image_id: int) -> None:
        """Point the model's config at the tokenizer's image placeholder id."""

    @abstractmethod
    def view(self, cfg: DictConfig, lvlm: PreTrainedModel) -> ImageView:
        """Its view of an image for this built model (image processor from the local directory, if any)."""

    # ---- shared: local directories ---------------------------------------------------------------------------
    def tokenizer(self, cfg: DictConfig) -> PreTrainedTokenizerBase:
        """Its tokenizer with [SEG] (and LISA's image wrappers, if set) added: the offline one of the random-init
        presets, or the local directory's."""
        if cfg.lvlm.kind == "random":
            return self.random_tokenizer()
        path = cfg.lvlm.path
        tok = AutoTokenizer.from_pretrained(path, use_fast=True, local_files_only=True,
                                            trust_remote_code=bool(cfg.trust_remote_code))
        if tok.pad_token is None:
            tok.pad_token = tok.unk_token
        # As the family's processor does: its own chat template (chat_template.jinja/.json) before the tokenizer's.
        tok.chat_template = _processor_chat_template(Path(path)) or tok.chat_template
        wanted = [self.image_token, SEG_TOKEN] + [t for t in (cfg.image_start, cfg.image_end) if t]
        missing = [t for t in wanted if t not in tok.get_vocab()]
        if missing:
            tok.add_special_tokens({"additional_special_tokens": missing})
        return tok

    def lvlm(self, cfg: DictConfig, tok: PreTrainedTokenizerBase) -> PreTrainedModel:
        """The model, random-init or loaded from ``model.lvlm.path``, its embeddings grown to the tokenizer."""
        dtype = DTYPES[cfg.dtype]
        image_id = tok.convert_tokens_to_ids(self.image_token)
        quantized = load_kwargs(cfg)  # model.quantization (QLoRA / int8), refused in one line where impossible
        if cfg.lvlm.kind == "random":
            torch.manual_seed(cfg.init_seed)
            model = self.random_lvlm(cfg, tok).to(dtype)
        else:
            model = self.model_class().from_pretrained(cfg.lvlm.path, dtype=dtype, local_files_only=True,
                                                       trust_remote_code=bool(cfg.trust_remote_code), **quantized)
            self.set_image_token(model, image_id)
        if model.get_input_embeddings().num_embeddings < len(tok):
            model.resize_token_embeddings(len(tok))
        return model


def check_lora_target(lvlm: torch.nn.Module, target: str) -> None:
    """LoRA goes on the language model only: ``model.lora.target`` (peft matches it against whole module names)
    must match modules, and none outside :data:`LANGUAGE_MODEL` (the vision tower of both families also has
    attention projections)."""
    names = [n for n, _ in lvlm.named_modules() if re.fullmatch(target, n)]
    outside = [n for n in names if not n.startswith(LANGUAGE_MODEL + ".")]
    if not names or outside:
        why = f"also matches {outside[0]} ({len(outside)} modules outside the language model)" if outside else \
            "matches no module"
        raise UserError(f"model.lora.target={target!r} {why}; LoRA goes on the language model only "
                        f"({LANGUAGE_MODEL}.*), e.g. '.*language_model.*\\.(q_proj|v_proj)'")


def checkpoint_type(path: str | None, family: LVLMFamily) -> tuple[str | None, str]:
    """(model_type, architectures) of a local transformers directory, or a one-line UserError when it is not one."""
    p = Path(path) if path else None
    if p is None or not p.is_dir():
        raise UserError(f"model.lvlm.path={path!r} does not exist; point it to a local transformers "
                        f"{family.architecture} directory (e.g. model={family.preset} model.lvlm.path=DIR); nothing "
                        "is downloaded")
    try:
        conf = json.loads((p / "config.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"model.lvlm.path={path}: no readable config.json ({type(e).__name__}); expected a local "
                        f"transformers {family.architecture} directory") from None
    if not isinstance(conf, dict):
        raise UserError(f"model.lvlm.path={path}: config.json is not a JSON object")
    return conf.get("model_type"), ", ".join(map(str, conf.get("architectures") or []))


def _processor_chat_template(path: Path) -> str | None:
    """The chat template a processor saved beside the tokenizer (chat_template.jinja or chat_template.json)."""
    if (path / "chat_template.jinja").is_file():
        return (path / "chat_template.jinja").read_text(encoding="utf-8")
    if (path / "chat_template.json").is_file():
        return json.loads((path / "chat_template.json").read_text(encoding="utf-8")).get("chat_template")
    return None
