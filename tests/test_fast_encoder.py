"""The frozen-encoder fast path (sim4seg.model.fast_encoder) gives the unmodified encoders' outputs.

LiteMedSAM on real images from ../shared/realdata: embeddings within 1e-3 of the unmodified TinyViT and masks
decoded from them (box prompts from the ground truth) at IoU >= 0.999. The fast path must be the one that runs
(bitwise equal to ``fast_forward``), must step aside while the encoder trains, and must keep the state dict."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from segment_anything.modeling import ImageEncoderViT
from segment_anything.utils.transforms import ResizeLongestSide

from sim4seg.model.fast_encoder import FastImageEncoderViT, FastTinyViT, optimize_encoder
from sim4seg.model.sam import build_sam

REAL = Path(__file__).resolve().parents[2] / "shared" / "realdata"
# (image, mask): ultrasound (PNG) and endoscopy (JPEG), different sizes and aspect ratios
CASES = [("busi/Dataset_BUSI_with_GT/benign/benign (1).png", "busi/Dataset_BUSI_with_GT/benign/benign (1)_mask.png"),
         ("busi/Dataset_BUSI_with_GT/malignant/malignant (1).png",
          "busi/Dataset_BUSI_with_GT/malignant/malignant (1)_mask.png"),
         ("kvasir_seg/Kvasir-SEG/images/cju0qkwl35piu0993l0dewei2.jpg",
          "kvasir_seg/Kvasir-SEG/masks/cju0qkwl35piu0993l0dewei2.jpg")]


def litemedsam(fast: bool):
    sam = build_sam(OmegaConf.create({"kind": "litemedsam", "checkpoint": None, "fast_encoder": fast}))
    return sam.eval().requires_grad_(False)


@pytest.fixture(scope="module")
def real():
    """SAM inputs x [3, 3, 256, 256] (the builder's normalisation and padding), box prompts [3, 4] in the 256 frame,
    (resized, original) sizes, and the embeddings of the unmodified and the fast encoder (same weights)."""
    if not all((REAL / i).exists() for i, _ in CASES):
        pytest.skip(f"real samples not found under {REAL}")
    resize, ref_sam, fast_sam = ResizeLongestSide(256), litemedsam(fast=False), litemedsam(fast=True)
    xs, boxes, sizes = [], [], []
    for image_rel, mask_rel in CASES:
        image = cv2.cvtColor(cv2.imread(str(REAL / image_rel)), cv2.COLOR_BGR2RGB)
        mask = cv2.imread(str(REAL / mask_rel), cv2.IMREAD_GRAYSCALE) > 127
        resized = resize.apply_image(image)
        xs.append(ref_sam.preprocess(torch.from_numpy(resized).permute(2, 0, 1).float()[None])[0])
        ys, cols = np.nonzero(mask)
        box = np.array([[cols.min(), ys.min(), cols.max(), ys.max()]], dtype=np.float32)
        boxes.append(resize.apply_boxes(box, mask.shape)[0])
        sizes.append((resized.shape[:2], mask.shape))
    x = torch.stack(xs)
    with torch.no_grad():
        ref, fast = ref_sam.image_encoder(x), fast_sam.image_encoder(x)
    return {"x": x, "boxes": torch.from_numpy(np.stack(boxes)), "sizes": sizes, "ref": ref, "fast": fast,
            "ref_sam": ref_sam, "fast_sam": fast_sam}


def decode(sam, emb: torch.Tensor, box: torch.Tensor, resize_hw, orig_hw) -> torch.Tensor:
    """One image's mask (bool [H, W]) for one box prompt."""
    sparse, dense = sam.prompt_encoder(points=None, boxes=box[None], masks=None)
    low, _ = sam.mask_decoder(image_embeddings=emb[None], image_pe=sam.prompt_encoder.get_dense_pe(),
                              sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense, multimask_output=False)
    return sam.postprocess_masks(low, tuple(resize_hw), tuple(orig_hw))[0, 0] > 0


def test_litemedsam_fast_path_matches_unmodified_on_real_images(real):
    assert type(real["fast_sam"].image_encoder) is FastTinyViT
    assert type(real["ref_sam"].image_encoder) is not FastTinyViT
    diff = (real["fast"] - real["ref"]).abs().max().item()
    assert 0 < diff <= 1e-3, diff  # 0: the unmodified computation ran (same weights, same ops)
    with torch.no_grad():
        for i, (resize_hw, orig_hw) in enumerate(real["sizes"]):
            m_ref = decode(real["ref_sam"], real["ref"][i], real["boxes"][i], resize_hw, orig_hw)
            m_fast = decode(real["fast_sam"], real["fast"][i], real["boxes"][i], resize_hw, orig_hw)
            assert m_ref.sum() > 100  # a real mask, not an empty one on both sides
            iou = (m_ref & m_fast).sum().item() / (m_ref | m_fast).sum().item()
            assert iou >= 0.999, (CASES[i][0], iou)


def test_fast_path_steps_aside_while_the_encoder_trains(real):
    """Trainable: the library's forward runs (autograd, current weights), bit for bit the unmodified one."""
    enc = litemedsam(fast=True).image_encoder.requires_grad_(True)
    out = enc(real["x"][:1])
    assert out.requires_grad  # the fast path runs under no_grad
    assert torch.equal(out.detach(), real["ref"][:1])


def test_state_dict_unchanged_and_refolded_on_load(real):
    ref, fast = litemedsam(fast=False).image_encoder, litemedsam(fast=True).image_encoder
    a, b = ref.state_dict(), fast.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # New batch-norm statistics through load_state_dict: the folded weights follow.
    changed = {k: (v * 1.5 if k.endswith("running_var") else v) for k, v in a.items()}
    ref.load_state_dict(changed)
    fast.load_state_dict(changed)
    x = real["x"][:1]
    with torch.no_grad():
        new_ref = ref(x)
        assert (new_ref - real["ref"][:1]).abs().max() > 1e-2  # the change matters
        assert (fast(x) - new_ref).abs().max() <= 1e-3


def test_vit_fast_path_matches_with_relative_positions():
    """segment_anything's ViT (window + global attention, decomposed relative positions) through SDPA."""
    torch.manual_seed(0)
    enc = ImageEncoderViT(img_size=64, patch_size=16, embed_dim=32, depth=2, num_heads=2, mlp_ratio=2.0,
                          out_chans=16, qkv_bias=True, use_rel_pos=True, window_size=3, global_attn_indexes=(1,),
                          norm_layer=partial(torch.nn.LayerNorm, eps=1e-6))
    for name, p in enc.named_parameters():
        if "rel_pos" in name:  # zero-initialised by default: make them matter
            p.data.normal_()
    enc.eval().requires_grad_(False)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ref = enc(x)
        assert type(optimize_encoder(enc)) is FastImageEncoderViT
        out = enc(x)
    assert torch.equal(out, enc.fast_forward(x))
    assert 0 < (out - ref).abs().max() <= 1e-4


def test_tiny_preset_gets_the_fast_path_unless_disabled():
    cfg = {"kind": "tiny", "checkpoint": None, "img_size": 64, "embed_dim": 16, "vit_dim": 16, "depth": 2}
    assert type(build_sam(OmegaConf.create(cfg)).image_encoder) is FastImageEncoderViT
    assert type(build_sam(OmegaConf.create({**cfg, "fast_encoder": False})).image_encoder) is ImageEncoderViT
