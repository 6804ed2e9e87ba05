"""The Qwen2.5-VL family: transformers' ``Qwen2_5_VLForConditionalGeneration`` and its processor's behaviour.

Dynamic resolution: ``Qwen2VLImageProcessor`` resizes the whole image, without cropping, to H' x W', multiples of
28 within [min_pixels, max_pixels] with the aspect ratio kept up to rounding (``smart_resize``), cuts it into
14-px patches (each repeated over the 2 frames of the temporal patch) and the vision tower merges every 2 x 2 of
them into one token: (H'/28) x (W'/28) image tokens, row-major (``model.clip_view=resize``; RVLS2M gets that grid).
``image_grid_thw`` = (1, H'/14, W'/14) goes with the pixels, and the language model's mrope positions are
computed from it and from ``mm_token_type_ids`` (1 at image tokens; Sim4Seg passes both to every forward and to
``generate``, so cached generation and teacher-forced passes place tokens alike). The prompt is its chat template
(``<|vision_start|><|image_pad|><|vision_end|>`` where the image goes).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from omegaconf import DictConfig, OmegaConf
from transformers import (
    AutoImageProcessor,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2VLImageProcessor,
)

from sim4seg.model.families.base import ImageInputs, ImageView, LVLMFamily
from sim4seg.model.tokenizer import build_tiny_qwen_tokenizer
from sim4seg.model.tokens import QWEN_IMAGE_TOKEN

SPECIAL_IDS = {"video_token_id": "<|video_pad|>", "vision_start_token_id": "<|vision_start|>",
               "vision_end_token_id": "<|vision_end|>"}


class QwenView(ImageView):
    """``Qwen2VLImageProcessor`` on the whole image (view ``resize``); the token count follows the image size."""

    clip_view = "resize"
    fixed_tokens = None

    def __init__(self, image_processor: Qwen2VLImageProcessor):
        self.image_processor = image_processor
        self.merge = image_processor.merge_size

    def __call__(self, image: np.ndarray) -> ImageInputs:
        """RGB uint8 [H, W, 3] -> patches [t h w, 1176], grid (t, h, w), (h/2) (w/2) tokens on an (h/2, w/2) grid"""
        out = self.image_processor(images=image, return_tensors="pt")
        thw = out["image_grid_thw"][0]
        t, h, w = (int(x) for x in thw)
        return ImageInputs(out["pixel_values"], t * h * w // self.merge**2, thw, (h // self.merge, w // self.merge))

    def n_tokens(self, hw: tuple[int, int] | None) -> int:
        if hw is None:  # the most: an image at max_pixels
            return self.image_processor.size["longest_edge"] // (self.image_processor.patch_size * self.merge) ** 2
        return self.image_processor.get_number_of_image_patches(int(hw[0]), int(hw[1])) // self.merge**2


class Qwen2_5_VL(LVLMFamily):
    name = "qwen2_5_vl"
    model_type = "qwen2_5_vl"
    architecture = "Qwen2_5_VLForConditionalGeneration"
    image_token = QWEN_IMAGE_TOKEN
    views = ("resize",)
    prompt_formats = ("chat_template",)
    preset = "qwen2_5_vl_7b"

    def random_tokenizer(self) -> PreTrainedTokenizerBase:
        return build_tiny_qwen_tokenizer()

    def random_lvlm(self, cfg: DictConfig, tok: PreTrainedTokenizerBase) -> PreTrainedModel:
        ids = {k: tok.convert_tokens_to_ids(t) for k, t in SPECIAL_IDS.items()}
        text = dict(OmegaConf.to_container(cfg.lvlm.text), vocab_size=len(tok), pad_token_id=tok.pad_token_id,
                    bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
        conf = Qwen2_5_VLConfig(vision_config=OmegaConf.to_container(cfg.lvlm.vision, resolve=True), text_config=text,
                                image_token_id=tok.convert_tokens_to_ids(QWEN_IMAGE_TOKEN), **ids)
        return Qwen2_5_VLForConditionalGeneration(conf)

    def model_class(self) -> type[PreTrainedModel]:
        return Qwen2_5_VLForConditionalGeneration

    def set_image_token(self, model: PreTrainedModel, image_id: int) -> None:
        model.config.image_token_id = image_id

    def view(self, cfg: DictConfig, lvlm: PreTrainedModel) -> QwenView:
        """The local directory's image processor (or one of the preset's pixel range), with ``model.lvlm.image``'s
        min_pixels / max_pixels where set (null keeps the checkpoint's)."""
        pixels = {k: v for k, v in OmegaConf.to_container(cfg.lvlm.image).items() if v is not None}
        if cfg.lvlm.kind == "pretrained" and (Path(cfg.lvlm.path) / "preprocessor_config.json").exists():
            improc = AutoImageProcessor.from_pretrained(cfg.lvlm.path, local_files_only=True, **pixels)
        else:
            v = lvlm.config.vision_config
            improc = Qwen2VLImageProcessor(patch_size=v.patch_size, temporal_patch_size=v.temporal_patch_size,
                                           merge_size=v.spatial_merge_size, **pixels)
        return QwenView(improc)
