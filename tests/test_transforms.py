"""Dataset transforms keep the mask aligned with the image: SAM's frame (longest-side resize + bottom/right pad)
and back (segment_anything's postprocess), and the CLIP view, for random sizes and aspect ratios."""

from __future__ import annotations

import numpy as np
import torch
from conftest import tiny_config
from hypothesis import given, settings
from hypothesis import strategies as st
from omegaconf import OmegaConf
from segment_anything.modeling import Sam

from sim4seg.model.families.llava import ClipView, image_processor
from sim4seg.model.processor import Processor
from sim4seg.model.sam import build_sam

SAM = build_sam(OmegaConf.create({"kind": "tiny", "checkpoint": None, "img_size": 128, "embed_dim": 32,
                                  "vit_dim": 32, "depth": 2}))


def processor(clip_view: str = "center_crop") -> Processor:
    return Processor(tokenizer=None, view=ClipView(image_processor(tiny_config()), clip_view, 256), sam_size=128,
                     sam_mean=[0.0] * 3, sam_std=[1.0] * 3, max_length=1024)


sizes = st.integers(min_value=40, max_value=400)


@st.composite
def image_with_box(draw):
    h, w = draw(sizes), draw(sizes)
    y0, x0 = draw(st.integers(0, h - 20)), draw(st.integers(0, w - 20))
    y1, x1 = draw(st.integers(y0 + 20, h)), draw(st.integers(x0 + 20, w))
    img = np.zeros((h, w, 3), np.uint8)
    img[y0:y1, x0:x1] = 255
    mask = img[..., 0] > 0
    return img, mask


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return (a & b).sum() / max(1, (a | b).sum())


@settings(max_examples=40, deadline=None)
@given(image_with_box())
def test_sam_frame_keeps_mask_aligned_and_pads_bottom_right(sample):
    img, mask = sample
    h, w = mask.shape
    x, (rh, rw) = processor().sam(img)
    assert x.shape == (3, 128, 128) and max(rh, rw) == 128
    assert abs(rh / h - rw / w) < 2.0 / min(h, w) + 2.0 / 128  # aspect ratio kept (up to rounding)
    bright = x[0].numpy() > 127
    assert not bright[rh:].any() and not bright[:, rw:].any()  # padding only below and to the right
    # Mapping SAM's frame back (segment_anything's postprocess) puts the box where it was: its bounding box
    # matches the original's to within one frame pixel, in original pixels.
    logits = torch.from_numpy(np.where(bright, 10.0, -10.0)).float()[None, None]
    back = Sam.postprocess_masks(SAM, logits, (rh, rw), (h, w))[0, 0].numpy() > 0
    assert back.shape == (h, w) and back.any()
    tol = max(h, w) / 128 + 1
    for axis in (0, 1):
        got, want = np.nonzero(back.any(axis=1 - axis))[0], np.nonzero(mask.any(axis=1 - axis))[0]
        assert abs(got[0] - want[0]) <= tol and abs(got[-1] - want[-1]) <= tol


@settings(max_examples=25, deadline=None)
@given(image_with_box(), st.sampled_from(["center_crop", "pad"]))
def test_clip_view_shows_the_region_rvls2m_assumes(sample, view):
    """The CLIP view is the central min(H, W) square (center_crop) or the image centred on a max(H, W) square
    (pad): exactly the geometry rvls2m.to_mask_prompt uses to place cells."""
    img, mask = sample
    h, w = mask.shape
    px = processor(view).vision(img).pixel_values[0].numpy()  # normalised channel 0 of the 64 x 64 view
    s = px.shape[0]
    side = min(h, w) if view == "center_crop" else max(h, w)
    top, left = (h - side) / 2, (w - side) / 2
    ys = top + (np.arange(s) + 0.5) * side / s
    xs = left + (np.arange(s) + 0.5) * side / s
    inside = (ys[:, None] >= 0) & (ys[:, None] < h) & (xs[None] >= 0) & (xs[None] < w)
    expect = np.zeros((s, s), bool)
    yi, xi = np.clip(ys.astype(int), 0, h - 1), np.clip(xs.astype(int), 0, w - 1)
    expect[inside] = mask[yi[:, None].repeat(s, 1)[inside], xi[None].repeat(s, 0)[inside]]
    proc = processor(view).image_processor
    # Above the grey padding (the CLIP mean colour) and below white: bicubic blur does not cross it.
    got = px > (200 / 255 - proc.image_mean[0]) / proc.image_std[0]
    rows, cols = np.nonzero(expect.any(1))[0], np.nonzero(expect.any(0))[0]
    # Compare when at least 5 x 5 view pixels of the box are visible: bicubic resizing blurs thinner ones away.
    if len(rows) >= 5 and len(cols) >= 5:
        c_got, c_want = (np.argwhere(m).mean(0) for m in (got, expect))
        assert np.abs(c_got - c_want).max() <= 1.5  # same place in the view, within ~1 of its pixels
        assert iou(got, expect) > 0.5


def test_image_tokens_follow_the_lvlm_config():
    """One ``<image>`` id per feature LlavaModel gives: CLIP's patches, plus its class token when
    vision_feature_select_strategy is "full" (577 at 336 px for ViT-L/14), not (image_size // patch_size) ** 2."""
    from conftest import QUERY, synthetic
    from transformers import CLIPVisionConfig, LlavaConfig

    from sim4seg.model.builder import build_model
    from sim4seg.model.families.llava import image_token_count

    def count(size: int, strategy: str) -> int:
        vision = CLIPVisionConfig(image_size=size, patch_size=14)
        return image_token_count(LlavaConfig(vision_config=vision, vision_feature_select_strategy=strategy))

    assert (count(224, "default"), count(336, "default"), count(336, "full")) == (256, 576, 577)
    cfg = tiny_config()
    cfg.lvlm.vision_feature_select_strategy = "full"
    model, proc = build_model(cfg)
    assert proc.n_image_tokens == (64 // 4) ** 2 + 1 == model.lvlm.config.image_seq_length
    image, mask = synthetic(0)
    batch = proc.collate([proc.sample(image, QUERY, "It is [SEG].", mask)])
    with torch.no_grad():  # transformers refuses a count of image ids that differs from its features
        logits = model.lvlm(input_ids=batch["input_ids"], pixel_values=batch["pixel_values"],
                            attention_mask=batch["attention_mask"]).logits
    assert logits.shape[1] == batch["input_ids"].shape[1]
