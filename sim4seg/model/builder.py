"""One builder for every preset: ``model`` config -> (Sim4Seg, Processor). Presets differ only in config.

``lvlm.family`` (:mod:`sim4seg.model.families`): ``llava`` or ``qwen2_5_vl``. ``lvlm.kind``: ``random`` builds the
family's model from the preset's sizes (tokenizer trained offline); ``pretrained`` loads a local transformers
directory (``lvlm.path``, e.g. the output of ``sim4seg convert-lisa``, or a Qwen2.5-VL release). Nothing is
downloaded; a missing directory, or one of another family or architecture, is refused before anything is built.
"""

from __future__ import annotations

import re

from omegaconf import DictConfig, OmegaConf
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from sim4seg.model import families
from sim4seg.model.families.base import DTYPES, check_lora_target
from sim4seg.model.frames import frame_of
from sim4seg.model.losses import LossWeights
from sim4seg.model.processor import Processor
from sim4seg.model.rvls2m import RVLS2MConfig
from sim4seg.model.sam import build_sam
from sim4seg.model.sim4seg import Sim4Seg
from sim4seg.model.tokens import SEG_TOKEN


def build_tokenizer(cfg: DictConfig) -> PreTrainedTokenizerBase:
    """The preset's tokenizer with Sim4Seg's tokens (a tokenizer folder is enough: no model config is read)."""
    return families.family_of(cfg).tokenizer(cfg)


def build_lvlm(cfg: DictConfig, tok: PreTrainedTokenizerBase) -> PreTrainedModel:
    return families.family_of(cfg).lvlm(cfg, tok)


def apply_trainable(model: Sim4Seg, cfg: DictConfig) -> Sim4Seg:
    """LISA's trainable set: LoRA on the language model's q/v projections (peft; ``model.lora.target``, refused
    if it reaches outside the language model), plus the parameters whose names match ``model.trainable``
    (lm_head, embed_tokens, phi, mask decoder); everything else frozen."""
    model.requires_grad_(False)
    if cfg.lora.enabled:
        from peft import LoraConfig, get_peft_model

        check_lora_target(model.lvlm, cfg.lora.target)
        lora = LoraConfig(r=cfg.lora.r, lora_alpha=cfg.lora.alpha, lora_dropout=cfg.lora.dropout,
                          target_modules=cfg.lora.target, bias="none")
        model.lvlm = get_peft_model(model.lvlm, lora)
    pattern = re.compile("|".join(cfg.trainable)) if cfg.trainable else None
    for name, p in model.named_parameters():
        if "lora_" in name or (pattern is not None and pattern.search(name)):
            p.requires_grad_(True)
    return model


def build_model(cfg: DictConfig, rvls2m_cfg: DictConfig | None = None,
                loss_cfg: DictConfig | None = None) -> tuple[Sim4Seg, Processor]:
    """Build the model of a ``model`` preset and the processor that prepares its inputs."""
    # First: an impossible rvls2m setting (e.g. k > g^2) or LVLM setting stops here, before anything is loaded.
    rv = RVLS2MConfig(**OmegaConf.to_container(rvls2m_cfg)) if rvls2m_cfg is not None else RVLS2MConfig()
    family = families.check(cfg)
    tok = family.tokenizer(cfg)
    lvlm = family.lvlm(cfg, tok)
    if cfg.gradient_checkpointing:
        lvlm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    dtype = DTYPES[cfg.dtype]
    sam = build_sam(cfg.sam).to(dtype)
    lw = LossWeights(**OmegaConf.to_container(loss_cfg)) if loss_cfg is not None else LossWeights()
    model = Sim4Seg(lvlm, sam, tok.convert_tokens_to_ids(SEG_TOKEN), tok.convert_tokens_to_ids(family.image_token),
                    rv, seg_state=cfg.seg_state, clip_view=cfg.clip_view, loss_weights=lw)
    # phi and SAM's decoder run in the model dtype; the tiny frozen prompt encoder stays fp32 (its random
    # positional encoding is not bf16-safe) and its outputs are cast for the decoder.
    model.text_hidden_fcs.to(dtype)
    sam.prompt_encoder.float()
    apply_trainable(model, cfg)
    proc = Processor(tok, family.view(cfg, lvlm), sam_size=sam.image_encoder.img_size,
                     sam_mean=sam.pixel_mean.flatten().tolist(), sam_std=sam.pixel_std.flatten().tolist(),
                     max_length=cfg.max_length, prompt_format=cfg.prompt_format, image_token=family.image_token,
                     image_start=cfg.image_start, image_end=cfg.image_end, sam_frame=frame_of(sam))
    return model, proc
