"""Meta's SAM2 release checkpoints (``sam2.1_hiera_{tiny,small,base_plus,large}.pt``) -> Sim4Seg's SAM2 modules.

A rename table plus a strict load (as transformers' ``convert_sam2_to_hf.py``, whose names the modules use): every
key of the image model is renamed by :data:`RENAMES`, the video-only parts (memory attention/encoder, object
pointers) are dropped by :data:`VIDEO_ONLY`, the four point embeddings are stacked into one table, and
``load_state_dict(strict=True)`` is the completeness check. The sizes of :data:`HIERA` are Meta's
``sam2.1_hiera_*.yaml`` trunks; :func:`hiera_size` reads which one a checkpoint holds.
"""

from __future__ import annotations

import re

import torch

# kind -> Meta's trunk: first-stage width and heads, blocks per stage, global-attention blocks, window per stage,
# background size of the windowed positional embedding (sam2.1_hiera_{t,s,b+,l}.yaml).
HIERA: dict[str, dict] = {
    "sam2_hiera_t": {"width": 96, "heads": 1, "stages": [1, 2, 7, 2], "global": [5, 7, 9],
                     "windows": [8, 4, 14, 7], "background": [7, 7]},
    "sam2_hiera_s": {"width": 96, "heads": 1, "stages": [1, 2, 11, 2], "global": [7, 10, 13],
                     "windows": [8, 4, 14, 7], "background": [7, 7]},
    "sam2_hiera_b+": {"width": 112, "heads": 2, "stages": [2, 3, 16, 3], "global": [12, 16, 20],
                      "windows": [8, 4, 14, 7], "background": [14, 14]},
    "sam2_hiera_l": {"width": 144, "heads": 2, "stages": [2, 6, 36, 4], "global": [23, 33, 43],
                     "windows": [8, 4, 16, 8], "background": [7, 7]},
}
SAM2_KINDS = ("tiny_sam2", *HIERA)  # model.sam.kind values of the SAM2 family (sim4seg.model.sam2)
RELEASE = {"sam2_hiera_t": "sam2.1_hiera_tiny.pt", "sam2_hiera_s": "sam2.1_hiera_small.pt",
           "sam2_hiera_b+": "sam2.1_hiera_base_plus.pt", "sam2_hiera_l": "sam2.1_hiera_large.pt"}

VIDEO_ONLY = re.compile(r"^(memory_attention|memory_encoder|mask_downsample|obj_ptr_proj|obj_ptr_tpos_proj)\."
                        r"|^(maskmem_tpos_enc|no_mem_pos_enc|no_obj_ptr|no_obj_embed_spatial)$")

_HEAD = {"0": "proj_in", "1": "layers.0", "2": "proj_out"}  # Meta's 3-layer MLP heads -> transformers' names
RENAMES: list[tuple[str, str]] = [
    # image side: Hiera trunk + FPN neck, and the per-image projections SAM2 runs before the decoder
    (r"^image_encoder\.trunk\.", "image_encoder.vision.backbone."),
    (r"^image_encoder\.neck\.convs\.(\d+)\.conv\.", r"image_encoder.vision.neck.convs.\1."),
    (r"^sam_mask_decoder\.conv_s([01])\.", r"image_encoder.conv_s\1."),
    (r"^no_mem_embed$", "image_encoder.no_memory_embedding"),
    (r"\.patch_embed\.proj\.", ".patch_embed.projection."),
    (r"\.blocks\.(\d+)\.norm([12])\.", r".blocks.\1.layer_norm\2."),
    (r"\.mlp\.layers\.0\.", ".mlp.proj_in."),  # the 2-layer MLPs of Hiera and of the two-way transformer
    (r"\.mlp\.layers\.1\.", ".mlp.proj_out."),
    # prompt encoder
    (r"^sam_prompt_encoder\.pe_layer\.positional_encoding_gaussian_matrix$",
     "prompt_encoder.shared_embedding.positional_embedding"),
    (r"^sam_prompt_encoder\.mask_downscaling\.0\.", "prompt_encoder.mask_embed.conv1."),
    (r"^sam_prompt_encoder\.mask_downscaling\.1\.", "prompt_encoder.mask_embed.layer_norm1."),
    (r"^sam_prompt_encoder\.mask_downscaling\.3\.", "prompt_encoder.mask_embed.conv2."),
    (r"^sam_prompt_encoder\.mask_downscaling\.4\.", "prompt_encoder.mask_embed.layer_norm2."),
    (r"^sam_prompt_encoder\.mask_downscaling\.6\.", "prompt_encoder.mask_embed.conv3."),
    (r"^sam_prompt_encoder\.", "prompt_encoder."),
    # mask decoder
    (r"^sam_mask_decoder\.output_upscaling\.0\.", "mask_decoder.upscale_conv1."),
    (r"^sam_mask_decoder\.output_upscaling\.1\.", "mask_decoder.upscale_layer_norm."),
    (r"^sam_mask_decoder\.output_upscaling\.3\.", "mask_decoder.upscale_conv2."),
    (r"\.out_proj\.", ".o_proj."),
    (r"\.layers\.(\d+)\.norm(\d)\.", r".layers.\1.layer_norm\2."),
    (r"\.norm_final_attn\.", ".layer_norm_final_attn."),
    (r"^sam_mask_decoder\.", "mask_decoder."),
]
_HEADS = re.compile(r"(iou_prediction_head|output_hypernetworks_mlps\.\d+|pred_obj_score_head)\.layers\.(\d)\.")
_POINTS = re.compile(r"^prompt_encoder\.point_embeddings\.(\d+)\.weight$")


def is_meta(state: dict[str, torch.Tensor]) -> bool:
    """A checkpoint in Meta's layout (the release ``.pt``), not one written by Sim4Seg (an export)."""
    return any(k.startswith(("image_encoder.trunk.", "sam_mask_decoder.")) for k in state)


def from_meta(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Meta's image-model keys renamed to Sim4Seg's SAM2 module names; video-only keys dropped. Keys no rule
    knows keep their names, so the strict load names them."""
    out, points = {}, {}
    for key, value in state.items():
        if VIDEO_ONLY.search(key):
            continue
        for pattern, repl in RENAMES:
            key = re.sub(pattern, repl, key)
        key = _HEADS.sub(lambda m: f"{m[1]}.{_HEAD[m[2]]}.", key)
        if m := _POINTS.match(key):
            points[int(m[1])] = value
        else:
            out[key] = value
    if points:  # Meta keeps one [1, C] embedding per point label; transformers one [4, C] table
        out["prompt_encoder.point_embed.weight"] = torch.cat([points[i] for i in sorted(points)])
    return out


def hiera_size(state: dict[str, torch.Tensor]) -> tuple[int, int] | None:
    """(first-stage width, number of blocks) of the Hiera trunk in a Sim4Seg-named state, or None without one."""
    patch = state.get("image_encoder.vision.backbone.patch_embed.projection.weight")
    if patch is None:
        return None
    blocks = {m[1] for k in state if (m := re.match(r"image_encoder\.vision\.backbone\.blocks\.(\d+)\.", k))}
    return patch.shape[0], len(blocks)


def kind_of(size: tuple[int, int]) -> str | None:
    """The release kind with this (width, blocks), if any."""
    return next((k for k, h in HIERA.items() if (h["width"], sum(h["stages"])) == size), None)
