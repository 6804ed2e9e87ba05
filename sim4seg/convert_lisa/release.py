"""What a LISA release says besides its weights: the LLaVA config (config.json), the tokenizer, the CLIP tower it
was trained with (a separate local folder) and its SAM variant."""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf
from segment_anything import sam_model_registry
from transformers import (
    AutoTokenizer,
    CLIPImageProcessor,
    CLIPVisionConfig,
    CLIPVisionModel,
    LlamaConfig,
    LlavaConfig,
    PreTrainedTokenizerBase,
)

from sim4seg.convert_lisa.weights import ReleaseWeights
from sim4seg.errors import UserError
from sim4seg.model.families.llava import image_token_count
from sim4seg.model.sam import SAM_BUILDERS
from sim4seg.model.tokens import IMAGE_TOKEN, SEG_TOKEN

IM_START, IM_END = "<im_start>", "<im_end>"
SAM_PREFIX = "model.visual_model."
# SAM image-encoder width -> (variant, depth) of segment_anything's official models.
SAM_VARIANTS = {1280: ("vit_h", 32), 1024: ("vit_l", 24), 768: ("vit_b", 12)}
SELECT_FEATURE = {"patch": "default", "cls_patch": "full"}  # LLaVA-v1's mm_vision_select_feature -> transformers
# The tower LISA was trained with: openai/clip-vit-large-patch14 (ViT-L/14 at 224 px, 256 image tokens).
LISA_CLIP = {"hidden_size": 1024, "num_hidden_layers": 24, "patch_size": 14, "image_size": 224}
_VIT_WIDTHS = {768: "B", 1024: "L", 1280: "H"}


def load_tokenizer(src: Path, use_start_end: bool | None) -> tuple[PreTrainedTokenizerBase, int]:
    """LISA's tokenizer (a sentencepiece ``tokenizer.model`` with ``added_tokens.json``, as LISA-7B-v1 ships it)
    with ``<image>`` added when absent -> (tokenizer, id of <image>). LISA's own ids are kept."""
    try:
        tok = AutoTokenizer.from_pretrained(str(src))
    except (OSError, ValueError, ImportError, TypeError) as e:
        raise UserError(f"{src}: cannot load the tokenizer ({str(e).splitlines()[0] if str(e) else type(e).__name__})"
                        ) from None
    vocab = tok.get_vocab()
    need = [SEG_TOKEN] + ([IM_START, IM_END] if use_start_end else [])
    missing = [t for t in need if t not in vocab]
    if missing:
        raise UserError(f"{src}: the tokenizer lacks {', '.join(missing)}; a LISA release adds [SEG] (and "
                        "<im_start>, <im_end>) to the LLaMA tokenizer")
    if tok.pad_token is None:
        tok.pad_token = tok.unk_token  # as LISA's training sets it
    if IMAGE_TOKEN not in vocab:
        tok.add_special_tokens({"additional_special_tokens": [IMAGE_TOKEN]})
    after = tok.get_vocab()
    if any(after[t] != vocab[t] for t in need):
        raise UserError(f"{src}: adding {IMAGE_TOKEN} changed the ids of LISA's tokens")
    return tok, after[IMAGE_TOKEN]


def clip_config(clip: Path) -> tuple[CLIPVisionConfig, CLIPImageProcessor]:
    """The CLIP folder's vision config and image processor (which must center-crop, as LISA's does)."""
    try:
        vision = CLIPVisionConfig.from_pretrained(str(clip))
        improc = CLIPImageProcessor.from_pretrained(str(clip))
    except (OSError, ValueError) as e:
        raise UserError(f"--clip {clip}: not a CLIP folder with config.json and preprocessor_config.json "
                        f"({str(e).splitlines()[0]})") from None
    crop = improc.crop_size or {}
    if not improc.do_center_crop or crop.get("height") != vision.image_size or crop.get("width") != vision.image_size:
        raise UserError(f"--clip {clip}: the image processor must center-crop to the tower's {vision.image_size} px "
                        f"(LISA's CLIP view); it has do_center_crop={improc.do_center_crop}, crop_size={crop}")
    return vision, improc


def check_tower(clip: Path, vision: CLIPVisionConfig, spec: Mapping[str, int]) -> None:
    """Refuse a CLIP tower other than ``spec`` (LISA's ViT-L/14 at 224 px): its features are not what the
    release's projector and LLaMA were trained on, and another resolution changes the number of image tokens."""
    if any(getattr(vision, k) != v for k, v in spec.items()):
        raise UserError(f"--clip {clip} is a CLIP {_describe(vision.to_dict())}, but LISA was trained with "
                        f"{_describe(spec)} (openai/clip-vit-large-patch14); pass that tower")


def _describe(v: Mapping) -> str:
    """e.g. "ViT-L/14 at 224 px" (a width outside B/L/H is written out, with the depth)."""
    width = _VIT_WIDTHS.get(v["hidden_size"]) or f"(width {v['hidden_size']}, {v['num_hidden_layers']} layers)"
    return f"ViT-{width}/{v['patch_size']} at {v['image_size']} px"


def clip_tower(clip: Path, dtype: torch.dtype) -> CLIPVisionModel:
    try:
        tower, info = CLIPVisionModel.from_pretrained(str(clip), dtype=dtype, output_loading_info=True)
    except (OSError, ValueError) as e:
        raise UserError(f"--clip {clip}: cannot load the CLIP vision weights ({str(e).splitlines()[0]})") from None
    if info.get("missing_keys") or info.get("mismatched_keys"):
        raise UserError(f"--clip {clip}: CLIP vision weights missing or of other shapes: "
                        f"{sorted(info.get('missing_keys') or [])[:3]} {list(info.get('mismatched_keys') or [])[:3]}")
    return tower


def llava_config(lisa: dict, vision: CLIPVisionConfig, tok: PreTrainedTokenizerBase, image_id: int, rows: int,
                 dtype: torch.dtype) -> LlavaConfig:
    """transformers' LLaVA config from LISA's config.json (LLaMA fields at the top level, mm_* for the vision side)."""
    need = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads")
    absent = [k for k in need if k not in lisa]
    if absent:
        raise UserError(f"config.json of the release lacks {', '.join(absent)}")
    if lisa.get("rope_scaling"):
        raise UserError(f"config.json: rope_scaling={lisa['rope_scaling']} is not supported (LISA has none)")
    if lisa.get("mm_projector_type", "linear") != "linear":
        raise UserError(f"config.json: mm_projector_type={lisa['mm_projector_type']!r}; only LISA's single Linear "
                        "projector is supported")
    feature = lisa.get("mm_vision_select_feature", "patch")
    if feature not in SELECT_FEATURE:
        raise UserError(f"config.json: mm_vision_select_feature={feature!r}: use one of {', '.join(SELECT_FEATURE)}")
    names = ("num_key_value_heads", "hidden_act", "max_position_embeddings", "rms_norm_eps", "rope_theta",
             "attention_bias")
    text = LlamaConfig(vocab_size=rows, tie_word_embeddings=False, bos_token_id=tok.bos_token_id,
                       eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                       **{k: lisa[k] for k in need + names if lisa.get(k) is not None})
    conf = LlavaConfig(vision_config=vision, text_config=text, image_token_index=image_id,
                       projector_hidden_act="linear", vision_feature_layer=int(lisa.get("mm_vision_select_layer", -2)),
                       vision_feature_select_strategy=SELECT_FEATURE[feature], multimodal_projector_bias=True,
                       tie_word_embeddings=False, pad_token_id=tok.pad_token_id)
    conf.image_seq_length = image_token_count(conf)
    conf.architectures = ["LlavaForConditionalGeneration"]
    conf.dtype = dtype
    return conf


def sam_settings(sam: str | Mapping, weights: ReleaseWeights) -> dict:
    """``model.sam`` for the release: a variant found from the image encoder's width and depth (``auto``), a variant
    name checked against them, or a full mapping for SAM kinds beyond segment_anything's (tests)."""
    if isinstance(sam, Mapping):
        settings = dict(sam)
        if settings.get("kind") not in SAM_BUILDERS:
            raise UserError(f"sam kind {settings.get('kind')!r} is unknown; choose one of {', '.join(SAM_BUILDERS)}")
        return settings
    official = [v for v, _ in SAM_VARIANTS.values()]
    if sam != "auto" and sam not in official:
        raise UserError(f"--sam-variant {sam!r}: use auto, {', '.join(official)}")
    (width, *_), _ = weights.meta(SAM_PREFIX + "image_encoder.patch_embed.proj.weight")
    blocks = {int(m.group(1)) for k in weights.where
              if (m := re.match(re.escape(SAM_PREFIX) + r"image_encoder\.blocks\.(\d+)\.", k))}
    found = SAM_VARIANTS.get(width)
    if sam == "auto":
        if found is None or found[1] != len(blocks):
            raise UserError(f"the SAM image encoder (width {width}, {len(blocks)} blocks) is none of vit_h (1280, 32), "
                            "vit_l (1024, 24), vit_b (768, 12)")
        sam = found[0]
    elif found is None or found[0] != sam or found[1] != len(blocks):
        raise UserError(f"--sam-variant {sam}: the SAM image encoder has width {width} and {len(blocks)} blocks, "
                        f"which is {found[0] if found else 'no official variant'}")
    return {"kind": sam}


def sam_shapes(sam_cfg: DictConfig) -> dict[str, tuple[int, ...]]:
    """Parameter shapes of the SAM that ``model.sam`` builds (on the meta device: nothing is allocated)."""
    with torch.device("meta"):
        if sam_cfg.kind in sam_model_registry and sam_cfg.kind != "default":
            model = sam_model_registry[sam_cfg.kind](checkpoint=None)
        else:
            model = SAM_BUILDERS[sam_cfg.kind](OmegaConf.merge(sam_cfg, {"checkpoint": None}))
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}
