"""The Qwen2.5-VL family on the ``tiny_qwen2_5_vl`` preset: the processor's dynamic resolution (tokens per image,
their row-major 2 x 2 merged grid over the whole resized image), RVLS2M on that rectangular grid and its geometry in
SAM's frame, LoRA on the language model only and gradients reaching only the trainable set, KV-cached generation
(mrope positions) equal to a no-cache loop and to teacher forcing, bad local directories refused in one line, and
train -> eval -> predict -> export through the entry points."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import child_env, make_samples, synthetic, tiny_config

from sim4seg.errors import UserError
from sim4seg.model import frames
from sim4seg.model.families.base import HEAD_NAMES
from sim4seg.model.prompt_formats import IGNORE
from sim4seg.model.rvls2m import RVLS2MConfig, region_mask, region_scores, to_mask_prompt, token_map

PRESET = "tiny_qwen2_5_vl"
SEG, IMAGE = "[SEG]", "<|image_pad|>"
QUERIES = ["Please segment the lesion.", "Where is the tumor in this breast ultrasound image?"]
# Four aspect ratios: landscape, portrait, square, very wide.
SIZES = [(100, 200), (200, 100), (150, 150), (60, 250)]


@pytest.fixture(scope="module")
def qwen():
    from sim4seg.model.builder import build_model

    torch.manual_seed(0)
    model, proc = build_model(tiny_config(PRESET))
    return model.eval(), proc


def batch_of(proc, n=2, answers="It is [SEG].", left_pad=False, query=QUERIES[0], start=0):
    return proc.collate(make_samples(proc, n, answers, True, query, start), left_pad=left_pad)


def ids_of(proc, token: str) -> int:
    return proc.tokenizer.convert_tokens_to_ids(token)


# ------------------------------------------------------------------------------------------------------------
# The processor: dynamic resolution, tokens per image, the chat template
# ------------------------------------------------------------------------------------------------------------
def test_image_tokens_follow_the_image_size_and_form_the_merged_grid(qwen):
    model, proc = qwen
    assert proc.n_image_tokens is None
    assert type(model.lvlm.get_base_model()).__name__ == "Qwen2_5_VLForConditionalGeneration"
    for h, w in SIZES:
        view = proc.vision(np.zeros((h, w, 3), np.uint8))
        _, gh, gw = view.grid_thw.tolist()
        rh, rw = gh * 14, gw * 14  # the resized image: multiples of 28 within the preset's pixel range
        assert rh % 28 == 0 and rw % 28 == 0 and 3136 <= rh * rw <= 28224
        assert abs(math.log(rh / rw) - math.log(h / w)) < 0.35  # aspect ratio kept up to rounding
        assert view.token_grid == (gh // 2, gw // 2) and view.n_tokens == gh * gw // 4
        assert view.pixel_values.shape == (gh * gw, 3 * 2 * 14 * 14)
        assert proc.view.n_tokens((h, w)) == view.n_tokens  # counted without decoding (dataset precheck)
        ids, _ = proc.tokens("Please segment the lesion.", None, (h, w))
        assert ids.count(ids_of(proc, IMAGE)) == view.n_tokens


def test_merged_tokens_are_row_major_over_the_whole_resized_image(qwen):
    """Merged token k covers block (k // w', k % w') of 28 x 28 px of the resized image: an image already at a
    multiple of 28 (not resampled) with one intensity per block shows it exactly; patch rows 4k..4k+3 are its 2 x 2
    patches."""
    _, proc = qwen
    h, w = 112, 168  # 4 x 6 blocks
    img = np.zeros((h, w, 3), np.uint8)
    for a in range(4):
        for b in range(6):
            img[28 * a:28 * (a + 1), 28 * b:28 * (b + 1)] = 50 + 40 * a + 6 * b
    view = proc.vision(img)
    assert view.token_grid == (4, 6)
    ip = proc.image_processor
    patches = view.pixel_values.view(-1, 3, 2, 14, 14)[:, 0] * ip.image_std[0] + ip.image_mean[0]  # channel 0
    for k in range(24):
        a, b = divmod(k, 6)
        torch.testing.assert_close(patches[4 * k:4 * k + 4], torch.full((4, 2, 14, 14), (50 + 40 * a + 6 * b) / 255),
                                   atol=2e-3, rtol=0)


@pytest.mark.parametrize("hw", SIZES)
def test_each_token_sees_its_part_of_the_whole_image(qwen, hw):
    """No crop and no padding: token (u, v) of a (h', w') grid shows rows u/h'..(u+1)/h' and columns v/w'..(v+1)/w'
    of the original image (a ramp image: its patches' mean equals that region's mean)."""
    _, proc = qwen
    h, w = hw
    ys, xs = np.mgrid[0:h, 0:w]
    img = np.repeat((40 + 170 * (ys / h) * 0.5 + 170 * (xs / w) * 0.5).astype(np.uint8)[..., None], 3, 2)
    view = proc.vision(img)
    gh, gw = view.token_grid
    ip = proc.image_processor
    tokens = (view.pixel_values.view(gh * gw, 4, 3, 2, 14, 14)[:, :, 0] * ip.image_std[0] + ip.image_mean[0]) * 255
    for k in range(gh * gw):
        u, v = divmod(k, gw)
        region = img[round(u * h / gh):round((u + 1) * h / gh), round(v * w / gw):round((v + 1) * w / gw), 0]
        assert abs(float(tokens[k].mean()) - float(region.mean())) < 2.5, (k, u, v)


def test_prompt_is_qwens_chat_template_and_labels_the_answer_only(qwen):
    _, proc = qwen
    tok = proc.tokenizer
    ids, labels = proc.tokens("Please segment the lesion.", "It is [SEG].", (112, 112))
    text = tok.decode([i for i in ids if i != ids_of(proc, IMAGE)])
    assert text == ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
                    "<|vision_start|><|vision_end|>Please segment the lesion.<|im_end|>\n<|im_start|>assistant\n"
                    "It is [SEG].<|im_end|>\n")
    trained = [i for i in labels if i != IGNORE]
    assert tok.decode(trained) == "It is [SEG].<|im_end|>\n" and labels[-len(trained):] == ids[-len(trained):]
    assert tok.eos_token == "<|im_end|>" and tok.bos_token is None
    prompt, _ = proc.tokens("Please segment the lesion.", None, (112, 112))
    assert ids[:len(prompt)] == prompt and tok.decode(prompt).endswith("<|im_start|>assistant\n")


# ------------------------------------------------------------------------------------------------------------
# RVLS2M on the grid the model saw
# ------------------------------------------------------------------------------------------------------------
def test_token_map_takes_the_real_grid_and_keeps_eq6_without_one():
    sim = torch.arange(6.0)[None]
    assert torch.equal(token_map(sim, token_grid=(2, 3)), torch.tensor([[[0.0, 1, 2], [3, 4, 5]]]))
    assert torch.equal(token_map(sim, token_grid=(3, 2)), torch.tensor([[[0.0, 1], [2, 3], [4, 5]]]))
    assert token_map(sim).shape == (1, 2, 3)  # Eq. 6: floor(sqrt 6) = 2 rows
    assert token_map(torch.arange(12.0)[None], token_grid=(2, 6)).shape == (1, 2, 6)  # Eq. 6 would say 3 x 4
    with pytest.raises(ValueError, match="3x3 token grid holds 9 tokens, not 6"):
        token_map(sim, token_grid=(3, 3))


def test_region_scores_on_a_rectangular_grid_hand_values():
    # 2 x 4 tokens into 2 x 2 cells: each cell is the mean of a 1 x 2 block.
    sim = torch.tensor([[1.0, 3.0, 5.0, 7.0, 2.0, 4.0, 6.0, 8.0]])
    r = region_scores(sim, grid=2, token_grid=(2, 4))
    assert torch.equal(r, torch.tensor([[[2.0, 6.0], [3.0, 7.0]]]))
    # Eq. 6 would have laid the same 8 scores out as 2 x 4 too, but a 4 x 2 grid pools other tokens together.
    # [[1, 3], [5, 7], [2, 4], [6, 8]]: each cell is the mean of a 2 x 1 block.
    assert torch.equal(region_scores(sim, grid=2, token_grid=(4, 2)), torch.tensor([[[3.0, 5.0], [4.0, 6.0]]]))
    logp = sim.log_softmax(-1)
    torch.testing.assert_close(region_scores(logp, 2, log=True, token_grid=(4, 2)).exp(),
                               region_scores(logp.exp(), 2, token_grid=(4, 2)))


@pytest.mark.parametrize("frame", ["letterbox", "stretch"])
@pytest.mark.parametrize("hw", SIZES)
def test_each_cell_lands_on_its_image_region_in_sams_frame(hw, frame):
    """clip_view=resize: cell (i, j) of g x g is rows i H/g..(i+1) H/g and columns j W/g..(j+1) W/g of the image;
    in SAM's frame (letterbox: scale 256 / max(H, W), padded; stretch: each axis to 256) it lights exactly that
    region, within 2 prompt pixels, for every cell."""
    h, w = hw
    g, size = 8, 256
    sy, sx = (size / max(h, w),) * 2 if frame == "letterbox" else (size / h, size / w)
    for i in range(g):
        for j in range(g):
            cells = torch.zeros(1, g, g, dtype=torch.bool)
            cells[0, i, j] = True
            prompt = frames.mask_prompt(frame, cells, [hw], "resize", size)[0, 0]
            rows, cols = prompt.any(1).nonzero().flatten(), prompt.any(0).nonzero().flatten()
            assert len(rows) and len(cols), (i, j)
            want = (i * h / g * sy, (i + 1) * h / g * sy, j * w / g * sx, (j + 1) * w / g * sx)
            got = (int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1)
            assert max(abs(a - b) for a, b in zip(got, want)) <= 2, (i, j, got, want)
            assert int(prompt.sum()) == len(rows) * len(cols)  # a rectangle
    everything = frames.mask_prompt(frame, torch.ones(1, g, g, dtype=torch.bool), [hw], "resize", size)[0, 0]
    assert int(everything.sum()) == round(h * sy) * round(w * sx)  # the whole image, no padding


@pytest.mark.parametrize("hw", SIZES)
def test_a_hot_token_lights_the_image_region_it_saw(qwen, hw):
    """End to end on the processor's real grid: one token far above the others selects cells (g = 16, k = 4)
    whose centres lie in that token's image region, and whose prompt pixels lie on the part of SAM's frame
    showing it (within half a cell, where a cell straddles the token's edge, + 2 px)."""
    _, proc = qwen
    h, w = hw
    g = 16
    gh, gw = proc.vision(np.zeros((h, w, 3), np.uint8)).token_grid
    s = 256 / max(h, w)
    for u, v in [(0, 0), (gh - 1, gw - 1), (gh // 2, gw // 3)]:
        states = torch.zeros(1, gh * gw, 1)
        states[0, u * gw + v] = 50.0
        cells = region_mask(states, torch.ones(1, 1), RVLS2MConfig(grid=g, k=4), (gh, gw)).cells
        for i, j in cells[0].nonzero().tolist():  # the token covers rows u/gh..(u+1)/gh of the image
            assert u <= (i + 0.5) / g * gh <= u + 1 and v <= (j + 0.5) / g * gw <= v + 1, (u, v, i, j)
        prompt = to_mask_prompt(cells, [hw], "resize", 256)[0, 0]
        ys, xs = prompt.nonzero(as_tuple=True)
        ty, tx = h / g * s / 2 + 2, w / g * s / 2 + 2
        assert len(ys)
        assert ys.min() >= u * h / gh * s - ty and ys.max() + 1 <= (u + 1) * h / gh * s + ty, (u, v)
        assert xs.min() >= v * w / gw * s - tx and xs.max() + 1 <= (v + 1) * w / gw * s + tx, (u, v)


def test_model_passes_each_images_grid_to_rvls2m(qwen, monkeypatch):
    model, proc = qwen
    batch = batch_of(proc, 2, ["It is [SEG].", "Sure, [SEG] and [SEG]."])
    assert batch["token_grid"][0] != batch["token_grid"][1]  # two images of other shapes: two grids
    seen = []
    original = region_mask

    def spy(states, seg, cfg, token_grid=None):
        seen.append((states.shape[1], token_grid))
        return original(states, seg, cfg, token_grid)

    monkeypatch.setattr("sim4seg.model.rvls2m.region_mask", spy)
    with torch.no_grad():
        out = model(batch)
    assert seen == [(gh * gw, (gh, gw)) for gh, gw in batch["token_grid"]]
    assert [d.cells.shape[0] for d in out.masks] == [1, 2]


# ------------------------------------------------------------------------------------------------------------
# What trains
# ------------------------------------------------------------------------------------------------------------
def test_lora_on_the_language_model_only_and_lisas_trainable_set(qwen):
    model, _ = qwen
    named = dict(model.named_parameters())
    trainable = {n for n, p in named.items() if p.requires_grad}
    lora = [n for n in named if "lora_" in n]
    assert lora and all(".language_model." in n and ("q_proj" in n or "v_proj" in n) for n in lora)
    assert not any("visual" in n for n in trainable)  # the vision tower (and its merger) stays frozen
    for key in (*HEAD_NAMES, "text_hidden_fcs", "sam.mask_decoder"):  # model.trainable's names reach Qwen's parts
        assert any(key in n for n in trainable), key
    assert trainable == {n for n in named if "lora_" in n or any(
        k in n for k in ("lm_head", "embed_tokens", "text_hidden_fcs", "mask_decoder"))}


def test_lora_target_reaching_the_vision_tower_is_refused():
    from sim4seg.model.builder import build_model

    cfg = tiny_config(PRESET)
    cfg.lora.target = r".*(qkv|q_proj|v_proj)"  # Qwen's vision blocks have a fused qkv projection
    with pytest.raises(UserError, match=r"model.lora.target=.* also matches model.visual.blocks.0.attn.qkv"):
        build_model(cfg)


def test_gradients_reach_the_trainable_set_only(qwen):
    import copy

    model = copy.deepcopy(qwen[0]).train()
    proc = qwen[1]
    with torch.no_grad():  # lora_B starts at 0, which makes lora_A's gradient 0
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.02, generator=torch.Generator().manual_seed(0))
    out = model(batch_of(proc, 2))
    assert out.n_masks == 2
    out.losses["total"].backward()
    named = dict(model.named_parameters())
    for n, p in named.items():
        if not p.requires_grad:
            assert p.grad is None, n
    trainable = [n for n, p in named.items() if p.requires_grad]
    nonzero = {n for n in trainable if named[n].grad is not None and named[n].grad.abs().sum() > 0}
    for key in ("lora_A", "lora_B", "text_hidden_fcs"):
        assert {n for n in trainable if key in n} <= nonzero, key
    for key in ("lm_head", "embed_tokens", "mask_decoder.transformer", "mask_decoder.output_upscaling"):
        assert any(key in n for n in nonzero), key


# ------------------------------------------------------------------------------------------------------------
# Generation: KV cache, mrope positions, [SEG] states
# ------------------------------------------------------------------------------------------------------------
def _no_cache_greedy(model, batch, steps: int) -> torch.Tensor:
    """Reference: the whole sequence with the images every step (the model computes its 3D positions from
    image_grid_thw and the attention mask each time), argmax of the last logits (the image placeholder
    suppressed, as Sim4Seg.generate does)."""
    ids, attn = batch["input_ids"], batch["attention_mask"]
    for _ in range(steps):
        logits = model.lvlm(input_ids=ids, attention_mask=attn, use_cache=False,
                            **model.vision_inputs(batch, ids)).logits[:, -1]
        logits[:, model.image_token_id] = -math.inf
        nxt = logits.argmax(-1, keepdim=True)
        ids, attn = torch.cat([ids, nxt], 1), torch.cat([attn, torch.ones_like(nxt)], 1)
    return ids[:, batch["input_ids"].shape[1]:]


def test_forward_uses_qwens_3d_positions(qwen):
    """Sim4Seg's inputs give the LVLM the mrope positions of its image grids (get_rope_index: image tokens at
    (t, row, col), text after the largest), not the 1D positions it falls back to without mm_token_type_ids."""
    model, proc = qwen
    batch = batch_of(proc, 2, left_pad=True)
    ids, attn = batch["input_ids"], batch["attention_mask"]
    inputs = model.vision_inputs(batch, ids)
    base = model.lvlm.get_base_model()
    pos, _ = base.model.get_rope_index(ids, inputs["mm_token_type_ids"], batch["image_grid_thw"], attention_mask=attn)
    with torch.no_grad():
        ours = model.lvlm(input_ids=ids, attention_mask=attn, **inputs).logits
        mrope = model.lvlm(input_ids=ids, attention_mask=attn, position_ids=pos, **inputs).logits
        plain = model.lvlm(input_ids=ids, attention_mask=attn, pixel_values=batch["pixel_values"],
                           image_grid_thw=batch["image_grid_thw"]).logits
    real = attn.bool()
    torch.testing.assert_close(ours[real], mrope[real])
    assert not torch.allclose(ours[real], plain[real], atol=1e-4)


def test_kv_cached_greedy_matches_no_cache_loop(qwen):
    model, proc = qwen
    tok = proc.tokenizer
    batch = batch_of(proc, 2, None, left_pad=True, query=QUERIES)
    assert (batch["attention_mask"][0] == 0).any() or (batch["attention_mask"][1] == 0).any()
    with torch.no_grad():
        gens = model.generate(batch, max_new_tokens=12, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
        ref = _no_cache_greedy(model, batch, 12)
    for g, r in zip(gens, ref.tolist()):
        if tok.eos_token_id in r:
            r = r[:r.index(tok.eos_token_id) + 1]
        assert g.tokens == r


class ForceSeg:
    def __init__(self, seg: int):
        self.seg = seg

    def __call__(self, input_ids, scores):
        out = torch.full_like(scores, -math.inf)
        out[:, self.seg] = 0.0
        return out


@pytest.mark.parametrize("seg_state", ["predicting", "token"])
def test_generated_masks_equal_teacher_forced_masks(qwen, seg_state):
    """Two left-padded prompts with images of other grids: the cells and masks of generated [SEG]s equal those of
    a teacher-forced pass over the same sequences (same mrope positions with and without the cache)."""
    from transformers import LogitsProcessorList

    model, proc = qwen
    tok, sid = proc.tokenizer, ids_of(proc, SEG)
    batch = batch_of(proc, 2, None, left_pad=True, query=QUERIES)
    old = model.seg_state
    model.seg_state = seg_state
    try:
        with torch.no_grad():
            gens = model.generate(batch, max_new_tokens=3, eos_token_id=tok.eos_token_id,
                                  pad_token_id=tok.pad_token_id, logits_processor=LogitsProcessorList([ForceSeg(sid)]))
            seq = torch.cat([batch["input_ids"], torch.tensor([g.tokens for g in gens])], 1)
            attn = torch.cat([batch["attention_mask"], torch.ones(2, 3, dtype=torch.long)], 1)
            out = model(dict(batch, input_ids=seq, attention_mask=attn, labels=None))
    finally:
        model.seg_state = old
    for g, d in zip(gens, out.masks):
        assert g.n_seg == 3 and d.logits.shape == g.decoded.logits.shape
        assert torch.equal(d.cells, g.decoded.cells)
        torch.testing.assert_close(d.logits, g.decoded.logits, atol=1e-3, rtol=1e-3)


def test_num_return_sequences_keeps_each_rows_image(qwen):
    """m paths per image: rows b*m .. b*m+m-1 see image b (its patches, grid and positions), so forced [SEG]s give
    the masks of a single-path generation."""
    from transformers import LogitsProcessorList

    model, proc = qwen
    tok, sid = proc.tokenizer, ids_of(proc, SEG)
    batch = batch_of(proc, 2, None, left_pad=True, query=QUERIES)
    force = LogitsProcessorList([ForceSeg(sid)])
    kw = {"max_new_tokens": 2, "eos_token_id": tok.eos_token_id, "pad_token_id": tok.pad_token_id,
          "logits_processor": force}
    with torch.no_grad():
        one = model.generate(batch, **kw)
        torch.manual_seed(0)
        many = model.generate(batch, do_sample=True, num_return_sequences=3, **kw)
    assert len(many) == 6
    for r, g in enumerate(many):
        ref = one[r // 3].decoded
        assert g.decoded.logits.shape == ref.logits.shape == (2, *batch["orig_hw"][r // 3])
        assert torch.equal(g.decoded.cells, ref.cells)
        torch.testing.assert_close(g.decoded.logits, ref.logits, atol=1e-4, rtol=1e-4)


def test_with_sam2_the_cached_seg_masks_equal_teacher_forcing():
    """Qwen2.5-VL with SAM2's decoder family (model.sam.kind=tiny_sam2): its stretch frame takes the same cells."""
    from transformers import LogitsProcessorList

    from sim4seg.config import compose
    from sim4seg.model.builder import build_model

    torch.manual_seed(0)
    model, proc = build_model(compose("train", [f"model={PRESET}", "model.sam.kind=tiny_sam2"]).model)
    model.eval()
    assert proc.sam_frame == "stretch"
    tok, sid = proc.tokenizer, ids_of(proc, SEG)
    batch = batch_of(proc, 2, None, left_pad=True, query=QUERIES)
    with torch.no_grad():
        gens = model.generate(batch, max_new_tokens=2, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                              logits_processor=LogitsProcessorList([ForceSeg(sid)]))
        seq = torch.cat([batch["input_ids"], torch.tensor([g.tokens for g in gens])], 1)
        attn = torch.cat([batch["attention_mask"], torch.ones(2, 2, dtype=torch.long)], 1)
        out = model(dict(batch, input_ids=seq, attention_mask=attn, labels=None))
    for g, d, hw in zip(gens, out.masks, batch["orig_hw"]):
        assert g.decoded.logits.shape == (2, *hw) and torch.equal(d.cells, g.decoded.cells)
        torch.testing.assert_close(d.logits, g.decoded.logits, atol=1e-3, rtol=1e-3)


# ------------------------------------------------------------------------------------------------------------
# Bad input: one line naming the setting, before anything is built
# ------------------------------------------------------------------------------------------------------------
def _fake_checkpoint(path: Path, model_type: str, arch: str) -> Path:
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps({"model_type": model_type, "architectures": [arch]}))
    return path


@pytest.mark.parametrize("preset,model_type,arch,match", [
    ("qwen2_5_vl_7b", "llava", "LlavaForConditionalGeneration",
     r"holds a model of model_type 'llava' \(LlavaForConditionalGeneration\), but model.lvlm.family=qwen2_5_vl "
     r"takes Qwen2_5_VLForConditionalGeneration .*; use model.lvlm.family=llava \(e.g. model=lisa_7b\)"),
    ("lisa_7b", "qwen2_5_vl", "Qwen2_5_VLForConditionalGeneration",
     r"but model.lvlm.family=llava takes LlavaForConditionalGeneration .*; use model.lvlm.family=qwen2_5_vl"),
    ("qwen2_5_vl_7b", "internvl", "InternVLForConditionalGeneration",
     r"holds a model of model_type 'internvl' \(InternVLForConditionalGeneration\), .*supported: llava = "
     r"LlavaForConditionalGeneration .*qwen2_5_vl = Qwen2_5_VLForConditionalGeneration"),
])
def test_a_checkpoint_of_another_family_is_refused_in_one_line(tmp_path, monkeypatch, preset, model_type, arch,
                                                               match):
    from sim4seg.config import compose
    from sim4seg.model import builder

    path = _fake_checkpoint(tmp_path / "ckpt", model_type, arch)
    cfg = compose("train", [f"model={preset}", f"model.lvlm.path={path}", "model.sam.checkpoint=/nowhere"]).model
    monkeypatch.setattr(builder, "build_sam", lambda c: pytest.fail("SAM built before the LVLM was checked"))
    with pytest.raises(UserError, match=match) as e:
        builder.build_model(cfg)
    assert "\n" not in str(e.value) and f"model.lvlm.path={path}" in str(e.value)


def test_missing_local_directory_names_the_setting():
    from sim4seg.config import compose
    from sim4seg.model.builder import build_model

    cfg = compose("train", ["model=qwen2_5_vl_7b", "model.lvlm.path=/no/such/dir", "model.sam.checkpoint=x"]).model
    with pytest.raises(UserError, match=r"model.lvlm.path='/no/such/dir' does not exist; point it to a local "
                                        r"transformers Qwen2_5_VLForConditionalGeneration directory .*nothing is "
                                        "downloaded"):
        build_model(cfg)


@pytest.mark.parametrize("override,match", [
    ("model.clip_view=center_crop", r"model.clip_view='center_crop': the qwen2_5_vl family sees an image as resize"),
    ("model.prompt_format=lisa_v1", r"model.prompt_format='lisa_v1': the qwen2_5_vl family's prompts use "
                                    "chat_template"),
])
def test_settings_the_family_cannot_take_are_refused(override, match):
    from sim4seg.config import compose
    from sim4seg.model.builder import build_model

    with pytest.raises(UserError, match=match):
        build_model(compose("train", [f"model={PRESET}", override]).model)


# ------------------------------------------------------------------------------------------------------------
# Entry points: train -> eval (generate) -> predict -> export, and the export gives identical outputs
# ------------------------------------------------------------------------------------------------------------
ENV = child_env()


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """3 steps of ``python -m sim4seg.train model=tiny_qwen2_5_vl ...``, run in this process as the launcher runs
    it (the same composed config into sim4seg.training.train): the interpreter start-up is the costly part."""
    from sim4seg.config import compose
    from sim4seg.data.synthetic import write_synthetic
    from sim4seg.training import train

    root = tmp_path_factory.mktemp("qwen_run")
    write_synthetic(root / "data", n=12, seed=0, progress=False)
    train(compose("train", [f"model={PRESET}", f"data.root={root / 'data'}", "train.max_steps=3",
                            f"train.output_dir={root / 'run'}", "train.grad_accum=1", "train.eval_every=0",
                            "train.save_every=0", "train.progress=false", "data.answer_format=seg",
                            "wandb.mode=disabled"]))
    return root


def test_train_then_eval_generate_and_predict_run(trained, capsys):
    from sim4seg.cli import main

    root = trained
    assert json.loads((root / "run" / "finished.json").read_text()) == {"steps_done": 3, "steps_planned": 3}
    r = subprocess.run([sys.executable, "-m", "sim4seg.eval", f"ckpt={root / 'run'}", f"data.root={root / 'data'}",
                        "mode=generate", "max_samples=3", "max_new_tokens=6", f"out={root / 'eval'}",
                        "progress=false"], cwd=root, capture_output=True, text=True, timeout=600, env=ENV)
    assert r.returncode == 0, r.stderr[-3000:]
    rows = [json.loads(x) for x in (root / "eval" / "samples.jsonl").read_text().splitlines()]
    assert len(rows) == 3 and json.loads((root / "eval" / "metrics.json").read_text())["max_new_tokens"] == 6
    image = sorted((root / "data" / "images").rglob("*.png"))[0]
    assert main(["predict", "--ckpt", str(root / "run"), "--image", str(image), "--query", QUERIES[0],
                 "--out", str(root / "predict"), "--max-new-tokens", "6"]) == 0  # what `sim4seg predict` runs
    assert json.loads((root / "predict" / f"{image.stem}.json").read_text())["query"] == QUERIES[0]


def test_export_reloads_with_identical_outputs(trained):
    from omegaconf import OmegaConf
    from transformers import LogitsProcessorList

    from sim4seg.model.checkpoint import load_run
    from sim4seg.model.export import export

    root = trained
    out = export(root / "run", root / "export")
    lvlm = OmegaConf.load(out / "config.yaml").model.lvlm
    assert (lvlm.family, lvlm.kind, lvlm.path) == ("qwen2_5_vl", "pretrained", "lvlm")
    results = []
    for ckpt in (root / "run", out):
        model, proc, _ = load_run(ckpt)
        model.eval()
        image, _ = synthetic(1)
        sample = proc.sample(image, QUERIES[0], None, None, "x")
        batch = proc.collate([sample], left_pad=True)
        tok = proc.tokenizer
        with torch.no_grad():
            free = model.generate(batch, max_new_tokens=6, eos_token_id=tok.eos_token_id,
                                  pad_token_id=tok.pad_token_id)[0]
            forced = model.generate(batch, max_new_tokens=2, eos_token_id=tok.eos_token_id,
                                    pad_token_id=tok.pad_token_id,
                                    logits_processor=LogitsProcessorList([ForceSeg(ids_of(proc, SEG))]))[0]
        results.append((free.tokens, forced.decoded, type(proc.image_processor).__name__, tok.chat_template))
    (t0, d0, ip0, ct0), (t1, d1, ip1, ct1) = results
    assert t0 == t1 and ip0 == ip1 == "Qwen2VLImageProcessor" and ct0 == ct1
    assert torch.equal(d0.cells, d1.cells)
    torch.testing.assert_close(d0.logits, d1.logits, atol=1e-4, rtol=1e-4)
