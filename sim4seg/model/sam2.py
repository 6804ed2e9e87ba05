"""SAM2 (Hiera), Sim4Seg's second decoder family: transformers' SAM2 modules behind segment_anything's interface.

The Sim4Seg module talks to a decoder family through segment_anything's ``Sam``: ``image_encoder(x)``,
``prompt_encoder(points=None, boxes=None, masks=m)`` with ``embed_dim``, ``mask_input_size`` and
``get_dense_pe()``, ``mask_decoder(image_embeddings=, image_pe=, sparse_prompt_embeddings=,
dense_prompt_embeddings=, multimask_output=)`` and ``postprocess_masks(low_res, resize_hw, orig_hw)``.
:class:`Sam2` gives SAM2 that interface, so training, evaluation, TTS, predict and export are one code path.

Where SAM2 differs from SAM, and what this module does about it:

- Its decoder also reads two high-resolution maps (strides 4 and 8, after the ``conv_s0``/``conv_s1``
  projections SAM2 runs once per image). The image encoder returns one tensor all the same: the coarse embedding
  [C, E, E] and the two maps folded onto the E x E grid without loss (``pixel_unshuffle``; C/4 x 2E x 2E -> C and
  C/8 x 4E x 4E -> 2C), concatenated to [4C, E, E]; the decoder unfolds it (:func:`unpack`). So the embedding
  cache, batching, TTS's decode of n prompts and export treat both families alike: an "image embedding" is one
  tensor per image, [C, E, E] for SAM and [4C, E, E] for SAM2.
- Its frame: SAM2 resizes the image to S x S without keeping the aspect ratio and upsamples the low-res masks
  straight to the original size (``SAM2Transforms``; transformers' ``Sam2ImageProcessor``); see
  :mod:`sim4seg.model.frames`.
- Multimask off is mask token 0, always: SAM2's eval-time switch to the most stable multimask output
  (``dynamic_multimask_via_stability``) is off, so training and inference decode the same token (as LISA's SAM).
  The object-score gate is not applied (SAM2's image predictor does not apply it either).
- No point or box prompts: the sparse prompt is empty, as in SAM2's image predictor, and [SEG] is its one token.

Kinds (``model.sam.kind``): ``tiny_sam2`` (random init, sizes from ``model.sam``, for tests) and
``sam2_hiera_{t,s,b+,l}`` from Meta's release checkpoint (``model.sam.checkpoint``, renamed by
:mod:`sim4seg.model.sam2_names`) or from a Sim4Seg export. ``model.sam.train_encoder=true`` puts LoRA
(``model.sam.encoder_lora``) on the image side (Citrus-V's last stage); the mask decoder trains in full through
``model.trainable``.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import nn
from transformers import Sam2HieraDetConfig, Sam2MaskDecoderConfig, Sam2PromptEncoderConfig, Sam2VisionConfig
from transformers.models.sam2.modeling_sam2 import Sam2MaskDecoder, Sam2PromptEncoder, Sam2VisionModel

from sim4seg.errors import UserError
from sim4seg.model.sam import SAM_MEAN, SAM_STD, _load_state, _require
from sim4seg.model.sam2_names import HIERA, RELEASE, from_meta, hiera_size, is_meta, kind_of

# The tiny random trunk of ``tiny_sam2``: widths model.sam.vit_dim / 4 * 2^stage; a global block that pools no query.
TINY = {"heads": 1, "stages": [1, 1, 2, 1], "global": [3], "windows": [4, 4, 4, 2], "background": [4, 4]}
ENCODER_LORA = {"r": 8, "alpha": 16, "dropout": 0.0, "target": r".*\.attn\.(qkv|proj)|conv_s[01]"}


def pack(top: torch.Tensor, s1: torch.Tensor, s0: torch.Tensor) -> torch.Tensor:
    """[B, C, E, E], [B, C/4, 2E, 2E], [B, C/8, 4E, 4E] -> one image embedding [B, 4C, E, E] (lossless)."""
    return torch.cat([top, F.pixel_unshuffle(s1, 2), F.pixel_unshuffle(s0, 4)], dim=1)


def unpack(packed: torch.Tensor, dim: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The inverse of :func:`pack` for decoder width ``dim`` (= C): [B, 4C, E, E] -> (top, s1, s0)."""
    return (packed[:, :dim], F.pixel_shuffle(packed[:, dim:2 * dim], 2), F.pixel_shuffle(packed[:, 2 * dim:], 4))


class Sam2ImageEncoder(nn.Module):
    """Hiera + FPN neck (transformers' ``Sam2VisionModel``), the no-memory embedding SAM2 adds for single images,
    and the per-image projections of the two high-resolution levels. [B, 3, S, S] -> [B, 4C, S/16, S/16]"""

    def __init__(self, config: Sam2VisionConfig, img_size: int):
        super().__init__()
        dim = config.fpn_hidden_size
        self.img_size = img_size
        self.vision = Sam2VisionModel(config)
        self.conv_s0 = nn.Conv2d(dim, dim // 8, kernel_size=1)
        self.conv_s1 = nn.Conv2d(dim, dim // 4, kernel_size=1)
        self.no_memory_embedding = nn.Parameter(torch.zeros(1, 1, dim))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        s0, s1, top = self.vision(images).fpn_hidden_states  # strides 4, 8, 16
        top = top + self.no_memory_embedding.view(1, -1, 1, 1)
        return pack(top, self.conv_s1(s1), self.conv_s0(s0))


class Sam2Prompts(Sam2PromptEncoder):
    """SAM2's prompt encoder with segment_anything's call: dense mask prompts only (Sim4Seg's RVLS2M region)."""

    def __init__(self, config: Sam2PromptEncoderConfig):
        super().__init__(config)
        self.embed_dim = config.hidden_size

    def get_dense_pe(self) -> torch.Tensor:
        """The positional encoding of the E x E image grid, [1, C, E, E] (SAM2's ``get_dense_pe``)."""
        h, w = self.image_embedding_size
        pe = self.shared_embedding.positional_embedding
        y = (torch.arange(h, device=pe.device, dtype=pe.dtype) + 0.5) / h
        x = (torch.arange(w, device=pe.device, dtype=pe.dtype) + 0.5) / w
        grid = torch.stack([x[None, :].expand(h, w), y[:, None].expand(h, w)], dim=-1)
        return self.shared_embedding(grid).permute(2, 0, 1)[None]

    def forward(self, points: None = None, boxes: None = None, masks: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """masks [B, 1, 4E, 4E] or None -> (sparse [B, 0, C], dense [B, C, E, E]; B = 1 without masks)"""
        if points is not None or boxes is not None:
            raise ValueError("Sim4Seg prompts SAM2 with a dense mask and the [SEG] embedding only")
        _, dense = super().forward(None, None, None, masks)
        return dense.new_zeros((dense.shape[0], 0, self.embed_dim)), dense


class Sam2Decoder(Sam2MaskDecoder):
    """SAM2's mask decoder with segment_anything's call: one image (its packed embedding) and its s prompts."""

    def __init__(self, config: Sam2MaskDecoderConfig):
        super().__init__(config)
        del self.conv_s0, self.conv_s1  # they run once per image: Sam2ImageEncoder holds them

    def forward(self, image_embeddings: torch.Tensor, image_pe: torch.Tensor, sparse_prompt_embeddings: torch.Tensor,
                dense_prompt_embeddings: torch.Tensor, multimask_output: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """image_embeddings [1, 4C, E, E]; image_pe [1, C, E, E]; sparse [s, N, C]; dense [s, C, E, E]
        -> low-res mask logits [s, K, 4E, 4E] and predicted IoU [s, K] (K = 3 with multimask, else 1)"""
        if image_embeddings.shape[0] != 1:
            raise ValueError(f"one image per call (its prompts are the batch), got {image_embeddings.shape[0]}")
        s = sparse_prompt_embeddings.shape[0]
        top, s1, s0 = (x.expand(s, -1, -1, -1) for x in unpack(image_embeddings, self.hidden_size))
        masks, iou, _, _ = super().forward(
            image_embeddings=top, image_positional_embeddings=image_pe.expand(s, -1, -1, -1),
            sparse_prompt_embeddings=sparse_prompt_embeddings[:, None], dense_prompt_embeddings=dense_prompt_embeddings,
            multimask_output=multimask_output, high_resolution_features=[s0, s1])
        return masks[:, 0], iou[:, 0]


class Sam2(nn.Module):
    """SAM2's image model in segment_anything's ``Sam`` layout (``image_encoder``, ``prompt_encoder``,
    ``mask_decoder``, ``pixel_mean``/``pixel_std``, ``postprocess_masks``), in SAM2's stretch frame."""

    frame = "stretch"  # sim4seg.model.frames

    def __init__(self, image_encoder: Sam2ImageEncoder, prompt_encoder: Sam2Prompts, mask_decoder: Sam2Decoder):
        super().__init__()
        self.image_encoder = image_encoder
        self.prompt_encoder = prompt_encoder
        self.mask_decoder = mask_decoder
        # SAM2 normalises [0, 1] images with ImageNet's mean/std: SAM's values on the 0-255 scale.
        self.register_buffer("pixel_mean", torch.tensor(SAM_MEAN).view(-1, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(SAM_STD).view(-1, 1, 1), persistent=False)

    def postprocess_masks(self, masks: torch.Tensor, input_size: tuple[int, int], original_size: tuple[int, int]
                          ) -> torch.Tensor:
        """Low-res logits [s, K, 4E, 4E] -> [s, K, H, W], bilinear straight to the original size as SAM2 does
        (the stretch frame shows the whole image: ``input_size`` is the full frame and needs no crop)."""
        return F.interpolate(masks, tuple(original_size), mode="bilinear", align_corners=False)


def _configs(spec: dict, img: int, dim: int, mask_channels: int, mlp_dim: int, heads: int
             ) -> tuple[Sam2VisionConfig, Sam2PromptEncoderConfig, Sam2MaskDecoderConfig]:
    widths = [spec["width"] * 2**i for i in range(4)]
    trunk = Sam2HieraDetConfig(hidden_size=widths[0], num_attention_heads=spec["heads"], image_size=[img, img],
                               blocks_per_stage=spec["stages"], embed_dim_per_stage=widths,
                               num_attention_heads_per_stage=[spec["heads"] * 2**i for i in range(4)],
                               window_size_per_stage=spec["windows"], global_attention_blocks=spec["global"],
                               window_positional_embedding_background_size=spec["background"])
    vision = Sam2VisionConfig(backbone_config=trunk, backbone_channel_list=widths[::-1], fpn_hidden_size=dim,
                              backbone_feature_sizes=[[img // s, img // s] for s in (4, 8, 16)])
    prompt = Sam2PromptEncoderConfig(hidden_size=dim, image_size=img, patch_size=16, mask_input_channels=mask_channels)
    decoder = Sam2MaskDecoderConfig(hidden_size=dim, mlp_dim=mlp_dim, num_attention_heads=heads,
                                    iou_head_hidden_dim=dim, dynamic_multimask_via_stability=False,
                                    attn_implementation="sdpa")  # Sam2Model passes its own (sdpa) down
    return vision, prompt, decoder


def _assemble(spec: dict, img: int, dim: int, mask_channels: int, mlp_dim: int, heads: int) -> Sam2:
    vision, prompt, decoder = _configs(spec, img, dim, mask_channels, mlp_dim, heads)
    return Sam2(Sam2ImageEncoder(vision, img), Sam2Prompts(prompt), Sam2Decoder(decoder))


def add_encoder_lora(encoder: nn.Module, cfg: DictConfig | dict | None) -> nn.Module:
    """LoRA adapters (peft) on the image side: Hiera's attention projections and SAM2's two high-resolution
    projections by default (``model.sam.encoder_lora``: r, alpha, dropout, target regex)."""
    from peft import LoraConfig, inject_adapter_in_model

    c = {**ENCODER_LORA, **(dict(cfg) if cfg else {})}
    return inject_adapter_in_model(LoraConfig(r=c["r"], lora_alpha=c["alpha"], lora_dropout=c["dropout"],
                                              target_modules=c["target"], bias="none"), encoder)


def _read(cfg: DictConfig, kind: str, spec: dict) -> dict[str, torch.Tensor]:
    """The checkpoint of ``model.sam.checkpoint`` in Sim4Seg's names, checked to hold the configured trunk."""
    origin = f"Meta's {RELEASE[kind]}" if kind in RELEASE else "a Sim4Seg export's sam.safetensors"
    path = _require(cfg.get("checkpoint"), "model.sam.checkpoint", origin)
    state = _load_state(path, "model.sam.checkpoint")
    if is_meta(state):
        state = from_meta(state)
    found = hiera_size(state)
    want = (spec["width"], sum(spec["stages"]))
    supported = ", ".join(HIERA)
    if found is None:
        raise UserError(f"model.sam.checkpoint={str(path)!r} holds no SAM2 Hiera image encoder (no "
                        f"image_encoder.trunk.* keys); model.sam.kind={kind} needs {origin} (SAM2 kinds: "
                        f"{supported}, tiny_sam2); a segment-anything checkpoint takes model.sam.kind=vit_h/vit_l/vit_b")
    if found != want:
        what = kind_of(found) or "an unknown size"
        raise UserError(f"model.sam.checkpoint={str(path)!r} is SAM2 {what} (Hiera width {found[0]}, {found[1]} "
                        f"blocks) but model.sam.kind={kind} expects width {want[0]}, {want[1]} blocks; set "
                        f"model.sam.kind to the checkpoint's size (supported: {supported})")
    return state


def _load(sam: Sam2, state: dict[str, torch.Tensor], setting: str) -> None:
    """Strict load: every key of the image model, nothing else, or one line naming what differs."""
    missing, unexpected = sam.state_dict().keys() - state.keys(), state.keys() - sam.state_dict().keys()
    if missing or unexpected:
        hint = "; it holds image-encoder LoRA weights: set model.sam.train_encoder=true" if any(
            "lora_" in k for k in unexpected) else ""
        raise UserError(f"{setting}: {len(missing)} missing keys (e.g. {sorted(missing)[:2]}) and {len(unexpected)} "
                        f"unexpected (e.g. {sorted(unexpected)[:2]}) for SAM2's image model{hint}")
    sam.load_state_dict(state, strict=True)


def _finish(sam: Sam2, state: dict[str, torch.Tensor] | None, cfg: DictConfig) -> Sam2:
    """Weights and the encoder's LoRA, in the order the checkpoint needs: a release checkpoint (no adapters)
    loads before LoRA is added; an export of a LoRA-trained encoder after."""
    setting = f"model.sam.checkpoint={cfg.get('checkpoint')!r}"
    if state is not None and not any("lora_" in k for k in state):
        _load(sam, state, setting)
        state = None
    if cfg.get("train_encoder", False):
        add_encoder_lora(sam.image_encoder, cfg.get("encoder_lora"))
    if state is not None:
        _load(sam, state, setting)
    return sam


def _tiny(cfg: DictConfig) -> Sam2:
    spec = {**TINY, "width": max(cfg.vit_dim // 4, 4)}
    state = _read(cfg, "tiny_sam2", spec) if cfg.get("checkpoint") else None  # an export carries its weights
    dim = cfg.embed_dim
    # 16 mask channels as SAM2: with 4 the first mask conv has 1 channel, whose LayerNorm erases the mask prompt.
    return _finish(_assemble(spec, cfg.img_size, dim, mask_channels=16, mlp_dim=2 * dim, heads=2), state, cfg)


def _release(kind: str, cfg: DictConfig) -> Sam2:
    state = _read(cfg, kind, HIERA[kind])  # checked before anything is built
    return _finish(_assemble(HIERA[kind], 1024, 256, mask_channels=16, mlp_dim=2048, heads=8), state, cfg)


SAM2_BUILDERS: dict[str, Callable[[DictConfig], Sam2]] = {"tiny_sam2": _tiny,
                                                          **{k: partial(_release, k) for k in HIERA}}


def build_sam2(kind: str, cfg: DictConfig) -> Sam2:
    return SAM2_BUILDERS[kind](cfg)
