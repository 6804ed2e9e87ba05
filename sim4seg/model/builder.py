"""One builder for every preset: ``model`` config -> (Sim4Seg, Processor). Presets differ only in config.

``lvlm.kind``: ``random`` builds ``LlavaForConditionalGeneration`` from ``LlavaConfig`` (sizes in the config,
tokenizer ``tiny`` trained offline); ``pretrained`` loads a local transformers LLaVA directory (``lvlm.path``),
e.g. the output of ``sim4seg convert-lisa``. Nothing is downloaded.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf
from transformers import (
    AutoTokenizer,
    CLIPImageProcessor,
    CLIPVisionConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    PreTrainedTokenizerBase,
)

from sim4seg.errors import UserError
from sim4seg.model.frames import frame_of
from sim4seg.model.losses import LossWeights
from sim4seg.model.processor import Processor
from sim4seg.model.rvls2m import RVLS2MConfig
from sim4seg.model.sam import build_sam
from sim4seg.model.sim4seg import Sim4Seg
from sim4seg.model.tokenizer import build_tiny_tokenizer
from sim4seg.model.tokens import IMAGE_TOKEN, SEG_TOKEN

CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def build_tokenizer(cfg: DictConfig) -> PreTrainedTokenizerBase:
    if cfg.lvlm.kind == "random":
        tok = build_tiny_tokenizer()
    else:
        tok = AutoTokenizer.from_pretrained(_local(cfg.lvlm.path, "model.lvlm.path"), use_fast=True,
                                            trust_remote_code=bool(cfg.get("trust_remote_code", False)))
        if tok.pad_token is None:
            tok.pad_token = tok.unk_token
        wanted = [IMAGE_TOKEN, SEG_TOKEN] + [t for t in (cfg.get("image_start"), cfg.get("image_end")) if t]
        missing = [t for t in wanted if t not in tok.get_vocab()]
        if missing:
            tok.add_special_tokens({"additional_special_tokens": missing})
    return tok


def build_lvlm(cfg: DictConfig, tok: PreTrainedTokenizerBase) -> LlavaForConditionalGeneration:
    image_id = tok.convert_tokens_to_ids(IMAGE_TOKEN)
    dtype = DTYPES[cfg.get("dtype", "float32")]
    if cfg.lvlm.kind == "random":
        v, t = cfg.lvlm.vision, cfg.lvlm.text
        conf = LlavaConfig(
            vision_config=CLIPVisionConfig(**OmegaConf.to_container(v)),
            text_config=LlamaConfig(vocab_size=len(tok), pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
                                    eos_token_id=tok.eos_token_id, **OmegaConf.to_container(t)),
            image_token_index=image_id, vision_feature_layer=cfg.lvlm.vision_feature_layer,
            vision_feature_select_strategy=cfg.lvlm.vision_feature_select_strategy,
            pad_token_id=tok.pad_token_id)
        conf.image_seq_length = image_token_count(conf)
        torch.manual_seed(cfg.get("init_seed", 0))
        model = LlavaForConditionalGeneration(conf).to(dtype)
    elif cfg.lvlm.kind == "pretrained":
        model = LlavaForConditionalGeneration.from_pretrained(
            _local(cfg.lvlm.path, "model.lvlm.path"), dtype=dtype,
            trust_remote_code=bool(cfg.get("trust_remote_code", False)))
        if model.config.image_token_index != image_id:
            model.config.image_token_index = image_id
    else:
        raise UserError(f"model.lvlm.kind={cfg.lvlm.kind!r}: use 'random' or 'pretrained'")
    if model.get_input_embeddings().num_embeddings < len(tok):
        model.resize_token_embeddings(len(tok))
    return model


def build_image_processor(cfg: DictConfig) -> CLIPImageProcessor:
    if cfg.lvlm.kind == "pretrained" and (Path(cfg.lvlm.path) / "preprocessor_config.json").exists():
        return CLIPImageProcessor.from_pretrained(cfg.lvlm.path)
    size = cfg.lvlm.vision.image_size
    return CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size},
                              image_mean=CLIP_MEAN, image_std=CLIP_STD)


def apply_trainable(model: Sim4Seg, cfg: DictConfig) -> Sim4Seg:
    """LISA's trainable set: LoRA on the language model's q/v projections (peft), plus the parameters whose
    names match ``model.trainable`` (lm_head, embed_tokens, phi, mask decoder); everything else frozen."""
    model.requires_grad_(False)
    if cfg.lora.enabled:
        from peft import LoraConfig, get_peft_model

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
    # First: an impossible rvls2m setting (e.g. k > g^2) stops here, before anything is loaded.
    rv = RVLS2MConfig(**OmegaConf.to_container(rvls2m_cfg)) if rvls2m_cfg is not None else RVLS2MConfig()
    tok = build_tokenizer(cfg)
    lvlm = build_lvlm(cfg, tok)
    if cfg.get("gradient_checkpointing", False):
        lvlm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    sam = build_sam(cfg.sam).to(DTYPES[cfg.get("dtype", "float32")])
    lw = LossWeights(**OmegaConf.to_container(loss_cfg)) if loss_cfg is not None else LossWeights()
    model = Sim4Seg(lvlm, sam, tok.convert_tokens_to_ids(SEG_TOKEN), tok.convert_tokens_to_ids(IMAGE_TOKEN), rv,
                    seg_state=cfg.seg_state, clip_view=cfg.clip_view, loss_weights=lw)
    # phi and SAM's decoder run in the model dtype; the tiny frozen prompt encoder stays fp32 (its random
    # positional encoding is not bf16-safe) and its outputs are cast for the decoder.
    model.text_hidden_fcs.to(DTYPES[cfg.get("dtype", "float32")])
    sam.prompt_encoder.float()
    apply_trainable(model, cfg)
    proc = Processor(tok, build_image_processor(cfg), n_image_tokens=image_token_count(lvlm.config),
                     sam_size=sam.image_encoder.img_size, sam_mean=sam.pixel_mean.flatten().tolist(),
                     sam_std=sam.pixel_std.flatten().tolist(), clip_view=cfg.clip_view,
                     max_length=cfg.get("max_length", 2048), prompt_format=cfg.get("prompt_format"),
                     image_start=cfg.get("image_start"), image_end=cfg.get("image_end"), sam_frame=frame_of(sam))
    return model, proc


def image_token_count(config: LlavaConfig) -> int:
    """Image features per image, as ``LlavaModel.get_image_features`` returns them (one ``<image>`` id each): the
    tower's tokens (patches, plus the class token of a CLIP tower), less the class token with
    ``vision_feature_select_strategy="default"``. ViT-L/14: 256 at 224 px (LISA), 576 at 336 px, 577 with "full"."""
    v = config.vision_config
    tokens = (v.image_size // v.patch_size) ** 2 + int(v.model_type == "clip_vision_model")
    return tokens - int(config.vision_feature_select_strategy == "default")


def _local(path: str | None, setting: str) -> str:
    if not path or not Path(path).exists():
        raise UserError(f"{setting}={path!r} does not exist; point it to a local transformers LLaVA directory "
                        "(e.g. made by `sim4seg convert-lisa` from LISA-7B-v1); nothing is downloaded")
    return str(path)
