"""The LLaVA family: transformers' ``LlavaForConditionalGeneration`` (a CLIP tower, a projector and Llama), as
written by ``sim4seg convert-lisa`` or released as llava-hf/llava-1.5-7b-hf.

It sees a square view of the image (``model.clip_view``: CLIP's centre crop, or the image padded to a square with
the mean colour as LLaVA-1.5 does) and gives one token per CLIP patch (plus the class token with
``vision_feature_select_strategy="full"``), a square grid.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from omegaconf import DictConfig, OmegaConf
from transformers import (
    CLIPImageProcessor,
    CLIPVisionConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from sim4seg.model.families.base import ImageInputs, ImageView, LVLMFamily
from sim4seg.model.tokenizer import build_tiny_tokenizer
from sim4seg.model.tokens import IMAGE_TOKEN

CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]


class ClipView(ImageView):
    """CLIP's processor (resize shortest side + centre crop) or, with ``clip_view=pad``, the image centred on a
    square of the mean colour first (LLaVA-1.5): rvls2m.view_box's two square views. Every image gives
    ``n`` tokens."""

    def __init__(self, image_processor: CLIPImageProcessor | None, clip_view: str, n: int):
        self.image_processor, self.clip_view, self.fixed_tokens = image_processor, clip_view, n

    def __call__(self, image: np.ndarray) -> ImageInputs:
        """RGB uint8 [H, W, 3] -> pixel values [3, s, s]"""
        if self.clip_view == "pad":
            h, w = image.shape[:2]
            side = max(h, w)
            fill = np.array(self.image_processor.image_mean) * 255
            sq = np.empty((side, side, 3), dtype=np.uint8)
            sq[:] = fill.round().astype(np.uint8)
            top, left = (side - h) // 2, (side - w) // 2
            sq[top:top + h, left:left + w] = image
            image = sq
        return ImageInputs(self.image_processor(images=image, return_tensors="pt")["pixel_values"][0],
                           self.fixed_tokens)

    def n_tokens(self, hw: tuple[int, int] | None) -> int:
        return self.fixed_tokens


class LLaVA(LVLMFamily):
    name = "llava"
    model_type = "llava"
    architecture = "LlavaForConditionalGeneration"
    image_token = IMAGE_TOKEN
    views = ("center_crop", "pad")
    prompt_formats = ("lisa_v1", "chat_template")
    preset = "lisa_7b"

    def random_tokenizer(self) -> PreTrainedTokenizerBase:
        return build_tiny_tokenizer()

    def random_lvlm(self, cfg: DictConfig, tok: PreTrainedTokenizerBase) -> PreTrainedModel:
        v, t = cfg.lvlm.vision, cfg.lvlm.text
        conf = LlavaConfig(
            vision_config=CLIPVisionConfig(**OmegaConf.to_container(v)),
            text_config=LlamaConfig(vocab_size=len(tok), pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
                                    eos_token_id=tok.eos_token_id, **OmegaConf.to_container(t)),
            image_token_index=tok.convert_tokens_to_ids(IMAGE_TOKEN),
            vision_feature_layer=cfg.lvlm.vision_feature_layer,
            vision_feature_select_strategy=cfg.lvlm.vision_feature_select_strategy, pad_token_id=tok.pad_token_id)
        conf.image_seq_length = image_token_count(conf)
        return LlavaForConditionalGeneration(conf)

    def model_class(self) -> type[PreTrainedModel]:
        return LlavaForConditionalGeneration

    def set_image_token(self, model: PreTrainedModel, image_id: int) -> None:
        model.config.image_token_index = image_id

    def view(self, cfg: DictConfig, lvlm: PreTrainedModel) -> ClipView:
        return ClipView(image_processor(cfg), cfg.clip_view, image_token_count(lvlm.config))


def image_processor(cfg: DictConfig) -> CLIPImageProcessor:
    """The local directory's CLIP processor, or one of the preset's image size (CLIP's normalisation)."""
    if cfg.lvlm.kind == "pretrained" and (Path(cfg.lvlm.path) / "preprocessor_config.json").exists():
        return CLIPImageProcessor.from_pretrained(cfg.lvlm.path)
    size = cfg.lvlm.vision.image_size
    return CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size},
                              image_mean=CLIP_MEAN, image_std=CLIP_STD)


def image_token_count(config: LlavaConfig) -> int:
    """Image features per image, as ``LlavaModel.get_image_features`` returns them (one ``<image>`` id each): the
    tower's tokens (patches, plus the class token of a CLIP tower), less the class token with
    ``vision_feature_select_strategy="default"``. ViT-L/14: 256 at 224 px (LISA), 576 at 336 px, 577 with "full"."""
    v = config.vision_config
    tokens = (v.image_size // v.patch_size) ** 2 + int(v.model_type == "clip_vision_model")
    return tokens - int(config.vision_feature_select_strategy == "default")
