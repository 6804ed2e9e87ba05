"""Sim4Seg on the tiny preset: what trains, where the [SEG] state comes from, several / no [SEG], RVLS2M on/off,
overfitting, KV-cached generation against a no-cache loop, the losses, and bad input."""

from __future__ import annotations

import dataclasses
import math
from contextlib import contextmanager

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import make_samples, synthetic, tiny_config

from sim4seg.model.losses import LossWeights, bce_loss, dice_loss, mask_losses, total_loss

SEG = "[SEG]"


def seg_id(proc) -> int:
    return proc.tokenizer.convert_tokens_to_ids(SEG)


@contextmanager
def configured(model, training: bool | None = None, seg_state: str | None = None, **rvls2m):
    """Temporarily set train/eval mode, ``seg_state`` and RVLS2M fields of the shared model."""
    old = (model.training, model.seg_state, model.rvls2m)
    try:
        if training is not None:
            model.train(training)
        if seg_state is not None:
            model.seg_state = seg_state
        model.rvls2m = dataclasses.replace(model.rvls2m, **rvls2m)
        yield model
    finally:
        model.train(old[0])
        model.seg_state, model.rvls2m = old[1], old[2]


@contextmanager
def capture_phi_inputs(model):
    """Inputs of every call of phi (text_hidden_fcs), in call order."""
    calls = []
    handle = model.text_hidden_fcs.register_forward_pre_hook(lambda mod, args: calls.append(args[0].detach().clone()))
    try:
        yield calls
    finally:
        handle.remove()


@contextmanager
def force_token(model, token: int):
    """Make ``token`` the argmax of every logit row (a large bias on lm_head's output)."""
    def hook(mod, inp, out):
        out = out.clone()
        out[..., token] += 1e4
        return out

    handle = model.lvlm.get_output_embeddings().register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


# ------------------------------------------------------------------------------------------------------------
# What trains
# ------------------------------------------------------------------------------------------------------------
TRAINED = ("lora_A", "lora_B", "text_hidden_fcs", "sam.mask_decoder", "lm_head", "embed_tokens")
FROZEN = ("vision_tower", "multi_modal_projector", "q_proj.base_layer", "v_proj.base_layer",
          "language_model.layers.0.self_attn.k_proj", "o_proj", "mlp.gate_proj", "language_model.norm",
          "sam.image_encoder", "sam.prompt_encoder")
# SAM's IoU head is trained in full with the decoder (as in LISA) but no loss supervises it: no gradient.
NO_GRAD_OK = ("sam.mask_decoder.iou_prediction_head",)


def test_trainable_set_is_lisas(tiny):
    model, _ = tiny
    named = dict(model.named_parameters())
    for key in TRAINED:
        names = [n for n in named if key in n]
        assert names, key
        assert all(named[n].requires_grad for n in names), key
    for key in FROZEN:
        names = [n for n in named if key in n]
        assert names, key
        assert not any(named[n].requires_grad for n in names), key
    lora = [n for n in named if "lora_" in n]
    assert all("language_model" in n and ("q_proj" in n or "v_proj" in n) for n in lora)
    assert {n for n, p in named.items() if p.requires_grad} == {n for n in named if any(k in n for k in TRAINED)}


def test_gradients_reach_trainable_only_and_step_changes_only_them(fresh_model, make_batch):
    model = fresh_model.train()
    with torch.no_grad():  # lora_B starts at 0, which makes lora_A's gradient 0: move it off 0 first
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.02, generator=torch.Generator().manual_seed(0))
    batch = make_batch(2)
    torch.manual_seed(0)
    out = model(batch)
    assert out.n_masks == 2
    out.losses["total"].backward()

    named = dict(model.named_parameters())
    trainable = {n for n, p in named.items() if p.requires_grad}
    no_grad = {n for n in trainable if named[n].grad is None}
    assert all(n.startswith(NO_GRAD_OK) for n in no_grad), sorted(no_grad)
    for n, p in named.items():
        if not p.requires_grad:
            assert p.grad is None, n

    def nonzero(key):
        return [n for n in trainable if key in n and named[n].grad is not None and named[n].grad.abs().sum() > 0]

    for key in ("lora_A", "lora_B", "text_hidden_fcs"):  # every one of them
        assert set(nonzero(key)) == {n for n in trainable if key in n}, key
    for key in ("lm_head", "embed_tokens", "mask_decoder.transformer", "mask_decoder.output_upscaling",
                "mask_decoder.output_hypernetworks_mlps.0", "mask_decoder.mask_tokens"):
        assert nonzero(key), key
    # embed_tokens: only rows of tokens in the batch get a gradient
    emb = next(p for n, p in named.items() if "embed_tokens" in n)
    rows = emb.grad.abs().sum(-1).nonzero().flatten().tolist()
    assert rows and set(rows) <= set(batch["input_ids"].unique().tolist())

    before = {n: p.detach().clone() for n, p in named.items()}
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    opt.step()
    for n, p in named.items():
        if not p.requires_grad:
            assert torch.equal(p, before[n]), f"frozen {n} changed"
        elif p.grad is not None and p.grad.abs().sum() > 0:
            assert not torch.equal(p, before[n]), f"trainable {n} did not change"


# ------------------------------------------------------------------------------------------------------------
# Where the [SEG] state comes from
# ------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("seg_state,offset", [("predicting", -1), ("token", 0)])
def test_seg_state_positions_and_phi_input(tiny, make_batch, seg_state, offset):
    model, proc = tiny
    batch = make_batch(2, answers=["It is [SEG].", "Sure, the segmentation result is [SEG]."])
    ids = batch["input_ids"]
    seg_at = [row.tolist().index(seg_id(proc)) for row in ids]
    assert seg_at[0] != seg_at[1]
    with configured(model, training=False, seg_state=seg_state):
        b, pos = model.seg_positions(ids)
        assert b.tolist() == [0, 1]
        assert pos.tolist() == [p + offset for p in seg_at]
        with torch.no_grad(), capture_phi_inputs(model) as calls:
            model(batch)
        with torch.no_grad():
            hidden = model.lvlm(input_ids=ids, pixel_values=batch["pixel_values"],
                                attention_mask=batch["attention_mask"], output_hidden_states=True).hidden_states[-1]
    expected = hidden[[0, 1], [p + offset for p in seg_at]]
    seg_inputs = [c for c in calls if c.shape == expected.shape]  # phi also sees image states ([s, n, H])
    assert seg_inputs
    for c in seg_inputs:
        torch.testing.assert_close(c, expected)
    other = hidden[[0, 1], [p - 1 - offset for p in seg_at]]  # the other seg_state's choice
    assert not torch.allclose(expected, other)


# ------------------------------------------------------------------------------------------------------------
# Several [SEG] / no [SEG]
# ------------------------------------------------------------------------------------------------------------
def test_several_seg_tokens_give_one_mask_each(tiny, make_batch):
    model, proc = tiny
    batch = make_batch(1, answers="It is [SEG] and [SEG].")
    assert int((batch["input_ids"] == seg_id(proc)).sum()) == 2
    h, w = batch["orig_hw"][0]
    assert batch["masks"][0].shape == (2, h, w)  # the processor gives each [SEG] the mask
    second = torch.zeros(h, w)
    second[: h // 3, : w // 3] = 1
    batch["masks"] = [torch.stack([batch["masks"][0][0], second])]
    with configured(model, training=False), torch.no_grad():
        out = model(batch)
    d = out.masks[0]
    assert out.n_masks == 2
    assert d.logits.shape == (2, h, w) and d.iou.shape == (2,)
    assert d.cells.shape == (2, model.rvls2m.grid, model.rvls2m.grid)
    assert not torch.allclose(d.logits[0], d.logits[1])  # two states, two masks
    bce = (bce_loss(d.logits[:1], batch["masks"][0][:1]) + bce_loss(d.logits[1:], second[None])) / 2
    torch.testing.assert_close(out.losses["bce"], bce)


def test_sample_without_seg_next_to_one_with_seg(tiny, make_batch):
    model, proc = tiny
    batch = make_batch(2, answers=["It is [SEG].", "There is nothing to segment here."])
    assert batch["masks"][1].shape[0] == 0
    try:
        with configured(model, training=True):
            torch.manual_seed(0)
            out = model(batch)
            assert out.n_masks == 1
            assert out.masks[0].logits.shape == (1, *batch["orig_hw"][0])
            assert out.masks[1].logits.shape == (0, *batch["orig_hw"][1])
            for k, v in out.losses.items():
                assert torch.isfinite(v), k
            bce = bce_loss(out.masks[0].logits, batch["masks"][0])  # averaged over the one real mask only
            torch.testing.assert_close(out.losses["bce"], bce)
            torch.testing.assert_close(out.losses["dice"], dice_loss(out.masks[0].logits, batch["masks"][0]))
            out.losses["total"].backward()  # the empty sample does not break backward either
            assert next(model.text_hidden_fcs.parameters()).grad is not None
    finally:
        model.zero_grad(set_to_none=True)  # the session model must not carry gradients into other tests


def test_batch_without_any_seg(tiny, make_batch):
    model, _ = tiny
    batch = make_batch(2, answers="There is nothing to segment here.")
    with configured(model, training=False), torch.no_grad():
        out = model(batch)
    assert out.n_masks == 0
    assert [d.logits.shape[0] for d in out.masks] == [0, 0]
    assert out.losses["mask"] == 0 and torch.isfinite(out.losses["total"])


# ------------------------------------------------------------------------------------------------------------
# RVLS2M on / off
# ------------------------------------------------------------------------------------------------------------
def _run(model, batch, seed: int = 0):
    dense = []
    handle = model.sam.prompt_encoder.register_forward_hook(lambda m, i, o: dense.append(o[1].detach().clone()))
    try:
        torch.manual_seed(seed)  # the same LoRA dropout masks in train mode
        with torch.no_grad():
            out = model(batch)
    finally:
        handle.remove()
    return out, dense


def test_rvls2m_changes_the_dense_prompt_and_masks(tiny, make_batch):
    model, _ = tiny
    batch = make_batch(2, sam_embeddings=True)
    pe = model.sam.prompt_encoder
    with configured(model, training=False, enabled=False):
        off, dense_off = _run(model, batch)
    with configured(model, training=False, enabled=True, at_inference_only=False):
        on, dense_on = _run(model, batch)
    assert all(d.cells is None for d in off.masks)
    assert all(d.cells is not None and d.cells.sum() == model.rvls2m.k for d in on.masks)
    no_mask = pe.no_mask_embed.weight.reshape(1, -1, 1, 1).expand_as(dense_off[0])
    assert all(torch.equal(d, no_mask) for d in dense_off)
    assert all(not torch.allclose(d, no_mask) for d in dense_on)
    for a, b in zip(off.masks, on.masks):
        assert a.logits.shape == b.logits.shape
        assert not torch.allclose(a.logits, b.logits)

    # at_inference_only: off while training, on in eval mode
    with configured(model, training=False, enabled=True, at_inference_only=True):
        infer, _ = _run(model, batch)
    for a, b in zip(infer.masks, on.masks):
        assert torch.equal(a.cells, b.cells)
        torch.testing.assert_close(a.logits, b.logits)
    with configured(model, training=True, enabled=True, at_inference_only=True):
        assert not model.use_rvls2m()
        train_only, _ = _run(model, batch, seed=1)
    with configured(model, training=True, enabled=False):
        train_off, _ = _run(model, batch, seed=1)
    with configured(model, training=True, enabled=True, at_inference_only=False):
        train_on, _ = _run(model, batch, seed=1)
    for a, b, c in zip(train_only.masks, train_off.masks, train_on.masks):
        assert a.cells is None
        torch.testing.assert_close(a.logits, b.logits)
        assert not torch.allclose(a.logits, c.logits)


# ------------------------------------------------------------------------------------------------------------
# Overfitting 4 samples
# ------------------------------------------------------------------------------------------------------------
def _ious(out, masks) -> list[float]:
    res = []
    for d, gt in zip(out.masks, masks):
        p, t = d.logits > 0, gt > 0.5
        res.append(float((p & t).sum()) / max(1.0, float((p | t).sum())))
    return res


OVERFIT_LR, OVERFIT_MAX_STEPS, OVERFIT_EVERY = 5e-3, 200, 10


def test_overfits_four_samples(fresh_model, make_batch):
    model = fresh_model
    torch.manual_seed(0)
    batch = make_batch(4, sam_embeddings=True)  # the SAM encoder is frozen: encode once
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=OVERFIT_LR, weight_decay=0.0)
    history = []
    for step in range(1, OVERFIT_MAX_STEPS + 1):
        model.train()
        loss = model(batch).losses["total"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % OVERFIT_EVERY == 0:
            model.eval()
            with torch.no_grad():
                ious = _ious(model(batch), batch["masks"])
            history.append((step, float(np.mean(ious))))
            if np.mean(ious) >= 0.9:
                break
    print(f"overfit: mean IoU {history[-1][1]:.3f} after {history[-1][0]} steps (lr {OVERFIT_LR})")
    assert history[-1][1] >= 0.9, history


# ------------------------------------------------------------------------------------------------------------
# Generation
# ------------------------------------------------------------------------------------------------------------
QUERIES = ["Please segment the lesion.",
           "Where is the tumor in this breast ultrasound image? Please output the segmentation mask."]


def _no_cache_greedy(model, batch, steps: int) -> torch.Tensor:
    """LISA-style reference: re-run the whole sequence with the image every step, take the argmax of the last logits."""
    ids, attn = batch["input_ids"], batch["attention_mask"]
    for _ in range(steps):
        pos = (attn.cumsum(-1) - 1).clamp_min(0)  # left padding: positions count real tokens only
        logits = model.lvlm(input_ids=ids, attention_mask=attn, pixel_values=batch["pixel_values"],
                            position_ids=pos, use_cache=False).logits
        nxt = logits[:, -1].argmax(-1, keepdim=True)
        ids, attn = torch.cat([ids, nxt], 1), torch.cat([attn, torch.ones_like(nxt)], 1)
    return ids[:, batch["input_ids"].shape[1]:]


def test_kv_cached_greedy_matches_no_cache_loop(tiny, make_batch):
    model, proc = tiny
    tok = proc.tokenizer
    batch = make_batch(2, answers=None, left_pad=True, query=QUERIES)
    assert (batch["attention_mask"][0] == 0).any()  # one prompt really is left-padded
    with configured(model, training=False), torch.no_grad():
        gens = model.generate(batch, max_new_tokens=16, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
        ref = _no_cache_greedy(model, batch, 16)
    assert len(gens) == 2
    for g, r in zip(gens, ref.tolist()):
        if tok.eos_token_id in r:
            r = r[:r.index(tok.eos_token_id) + 1]
        assert g.tokens == r
        assert g.truncated == (tok.eos_token_id not in r)
        assert g.n_seg == r.count(seg_id(proc)) and math.isfinite(g.mean_logprob)


def test_generate_num_return_sequences_and_masks_at_original_size(tiny, make_batch):
    model, proc = tiny
    tok, sid = proc.tokenizer, seg_id(proc)
    batch = make_batch(2, answers=None, left_pad=True, query=QUERIES)
    m, t = 3, 4
    with configured(model, training=False), torch.no_grad():
        torch.manual_seed(0)
        plain = model.generate(batch, max_new_tokens=t, do_sample=True, num_return_sequences=m,
                               eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
        with force_token(model, sid):
            forced = model.generate(batch, max_new_tokens=t, do_sample=True, num_return_sequences=m,
                                    eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    assert len(plain) == len(forced) == 2 * m
    for r, g in enumerate(forced):
        h, w = batch["orig_hw"][r // m]  # rows b*m .. b*m+m-1 belong to image b
        assert g.tokens == [sid] * t
        assert g.n_seg == g.tokens.count(sid) == t
        assert g.decoded.logits.shape == (t, h, w)
        assert g.decoded.iou.shape == (t,)
    for g in plain:
        assert g.n_seg == g.tokens.count(sid) and g.decoded.logits.shape[0] == g.n_seg


@pytest.mark.parametrize("seg_state", ["predicting", "token"])
def test_generated_masks_equal_teacher_forced_masks(tiny, make_batch, seg_state):
    """The masks of generated [SEG]s equal those of a teacher-forced pass over the same sequence."""
    model, proc = tiny
    tok, sid = proc.tokenizer, seg_id(proc)
    batch = make_batch(1, answers=None, left_pad=True)
    with configured(model, training=False, seg_state=seg_state), torch.no_grad():
        with force_token(model, sid):
            g = model.generate(batch, max_new_tokens=3, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)[0]
        seq = torch.cat([batch["input_ids"], torch.tensor([g.tokens])], 1)
        tf = dict(batch, input_ids=seq, attention_mask=torch.ones_like(seq), labels=None)
        out = model(tf)
    assert g.n_seg == 3 and out.masks[0].logits.shape == g.decoded.logits.shape
    assert torch.equal(out.masks[0].cells, g.decoded.cells)
    torch.testing.assert_close(out.masks[0].logits, g.decoded.logits, atol=1e-3, rtol=1e-3)


def test_sim_std_is_the_spread_of_eq4_per_seg(tiny, make_batch):
    model, _ = tiny
    batch = make_batch(1, answers="It is [SEG] and [SEG].")
    ids = batch["input_ids"]
    with configured(model, training=False), torch.no_grad():
        out = model(batch)
        hidden = model.lvlm(input_ids=ids, pixel_values=batch["pixel_values"], attention_mask=batch["attention_mask"],
                            output_hidden_states=True).hidden_states[-1]
        b, pos = model.seg_positions(ids)
        phi = model.text_hidden_fcs
        sim = phi(model.image_states(hidden, ids)[0]) @ phi(hidden[b, pos]).T  # Eq. 4: [n, s]
    d = out.masks[0]
    assert d.sim_std.shape == (2,)
    torch.testing.assert_close(d.sim_std, sim.std(dim=0, correction=0), rtol=1e-4, atol=1e-6)
    with configured(model, training=False, enabled=False), torch.no_grad():
        assert model(batch).masks[0].sim_std is None  # no RVLS2M, no similarity


@pytest.fixture(scope="module")
def tiny_bf16():
    """The tiny preset in bf16 (its own weights: the same seeds as ``tiny``)."""
    from sim4seg.model.builder import build_model

    cfg = tiny_config()
    cfg.dtype = "bfloat16"
    torch.manual_seed(0)
    model, proc = build_model(cfg)
    return model.eval(), proc


@pytest.mark.parametrize("query", QUERIES)
def test_bf16_generation_and_teacher_forcing_give_the_same_cells_and_masks(tiny_bf16, query):
    """Issue 12.7: in bf16 the cached [SEG] state and the teacher-forced one differ in the last bit; phi in bf16
    turned that into other RVLS2M cells (2 of these 48 [SEG]s when written). With phi in fp32 for the similarity the cells are
    equal, and the masks differ only where a logit is within 1e-2 of the threshold."""
    model, proc = tiny_bf16
    tok, sid = proc.tokenizer, seg_id(proc)
    # One query for all: equal prompt lengths, no padding, so the teacher-forced positions equal generate's.
    batch = proc.collate(make_samples(proc, 12, answers=None, query=query), left_pad=True)
    assert batch["attention_mask"].all()
    with torch.no_grad(), force_token(model, sid):
        gens = model.generate(batch, max_new_tokens=4, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
        seq = torch.cat([batch["input_ids"], torch.tensor([g.tokens for g in gens])], 1)
        out = model(dict(batch, input_ids=seq, attention_mask=torch.ones_like(seq), labels=None))
    for tf, g in zip(out.masks, gens):
        assert g.n_seg == 4
        assert torch.equal(tf.cells, g.decoded.cells)
        a, b = tf.logits, g.decoded.logits
        assert a.dtype == b.dtype == torch.float32  # upsampled and thresholded in fp32, as LISA does
        differ = (a > 0) != (b > 0)
        assert (a[differ].abs() < 1e-2).all() and (b[differ].abs() < 1e-2).all()


def test_bf16_masks_are_upsampled_in_fp32(tiny_bf16):
    model, proc = tiny_bf16
    batch = proc.collate(make_samples(proc, 1), left_pad=False)
    low = []
    handle = model.sam.mask_decoder.register_forward_hook(lambda m, a, o: low.append(o[0]))
    try:
        with torch.no_grad():
            d = model(batch).masks[0]
    finally:
        handle.remove()
    assert low[0].dtype == torch.bfloat16 and d.logits.dtype == torch.float32
    h, w = batch["orig_hw"][0]
    expected = model.sam.postprocess_masks(low[0].float(), tuple(batch["resize_hw"][0]), (h, w))[:, 0]
    assert torch.equal(d.logits, expected)


def test_fp16_embedding_cache_halves_the_disk_and_keeps_the_masks(tiny, make_batch, tmp_path):
    from sim4seg.errors import UserError
    from sim4seg.model.embedding_cache import EmbeddingCache

    model, _ = tiny
    batch = make_batch(2)
    caches = {d: EmbeddingCache(tmp_path, model.sam.image_encoder, d) for d in ("float32", "float16")}
    assert caches["float32"].dir != caches["float16"].dir  # never read as each other
    emb = {d: c(batch["sam_images"]) for d, c in caches.items()}  # misses: encoded and written
    again = {d: c(batch["sam_images"]) for d, c in caches.items()}  # hits: read back
    for d, c in caches.items():
        assert c.hits == 2 and c.misses == 2
        assert torch.equal(emb[d], again[d]) and emb[d].dtype == torch.float32  # a hit returns what a miss did
    size = {d: sum(f.stat().st_size for f in c.dir.iterdir()) for d, c in caches.items()}
    assert 0.49 < size["float16"] / size["float32"] < 0.51
    torch.testing.assert_close(emb["float16"], emb["float32"], rtol=1e-3, atol=1e-4)
    with configured(model, training=False), torch.no_grad():
        masks = {d: model(dict(batch, sam_embeddings=e)).masks for d, e in emb.items()}
    for a, b in zip(masks["float32"], masks["float16"]):
        torch.testing.assert_close(a.logits, b.logits, rtol=0, atol=1e-3)  # measured: 2e-5
        differ = (a.logits > 0) != (b.logits > 0)  # only pixels right at the threshold may flip
        assert differ.float().mean() < 1e-3 and (a.logits[differ].abs() < 1e-3).all()
    with pytest.raises(UserError, match="cache_dtype='bfloat16'"):
        EmbeddingCache(tmp_path, model.sam.image_encoder, "bfloat16")


# ------------------------------------------------------------------------------------------------------------
# Losses
# ------------------------------------------------------------------------------------------------------------
def test_mask_losses_hand_computed():
    ln3 = math.log(3.0)
    pred = [torch.tensor([[[0.0, 0.0]]]), torch.tensor([[[ln3], [-ln3]]]), torch.zeros(0, 3, 3)]
    gt = [torch.tensor([[[1.0, 0.0]]]), torch.tensor([[[1.0], [1.0]]]), torch.zeros(0, 3, 3)]
    bce, dice, n = mask_losses(pred, gt)
    assert n == 2
    # mask 1: both pixels at p = 1/2 -> ln 2; mask 2: -log(3/4) and -log(1/4), averaged
    bce_1, bce_2 = math.log(2.0), (math.log(4 / 3) + math.log(4.0)) / 2
    assert float(bce) == pytest.approx((bce_1 + bce_2) / 2, rel=1e-6)
    # Dice with 1/1000 scale, eps 1e-6: mask 1 p = (.5, .5), t = (1, 0); mask 2 p = (.75, .25), t = (1, 1)
    dice_1 = 1 - (2 * 0.5 / 1000 + 1e-6) / ((0.5 + 0.5) / 1000 + 1 / 1000 + 1e-6)
    dice_2 = 1 - (2 * (0.75 + 0.25) / 1000 + 1e-6) / ((0.75 + 0.25) / 1000 + 2 / 1000 + 1e-6)
    assert float(dice) == pytest.approx((dice_1 + dice_2) / 2, rel=1e-5)
    # the per-call losses sum over masks
    two = torch.tensor([[[0.0, 0.0]], [[ln3, -ln3]]]), torch.tensor([[[1.0, 0.0]], [[1.0, 1.0]]])
    assert float(bce_loss(*two)) == pytest.approx(bce_1 + bce_2, rel=1e-6)
    assert float(dice_loss(*two)) == pytest.approx(dice_1 + dice_2, rel=1e-5)


def test_mask_losses_no_masks():
    bce, dice, n = mask_losses([torch.zeros(0, 4, 4)], [torch.zeros(0, 4, 4)])
    assert n == 0 and float(bce) == 0 and float(dice) == 0


def test_total_loss_weights():
    txt, bce, dice = torch.tensor(1.5), torch.tensor(0.25), torch.tensor(0.8)
    d = total_loss(txt, bce, dice, LossWeights())
    assert float(d["mask"]) == pytest.approx(2 * 0.25 + 0.5 * 0.8)
    assert float(d["total"]) == pytest.approx(1.5 + 2 * 0.25 + 0.5 * 0.8)
    d = total_loss(txt, bce, dice, LossWeights(txt=0.5, mask=3.0, bce=1.0, dice=2.0))
    assert float(d["total"]) == pytest.approx(0.5 * 1.5 + 3.0 * (0.25 + 2 * 0.8))
    assert (d["txt"], d["bce"], d["dice"]) == (txt, bce, dice)


def test_forward_losses_are_wired(tiny, make_batch):
    model, _ = tiny
    batch = make_batch(2, sam_embeddings=True)
    with configured(model, training=False), torch.no_grad():
        out = model(batch)
        logits = model.lvlm(input_ids=batch["input_ids"], pixel_values=batch["pixel_values"],
                            attention_mask=batch["attention_mask"]).logits
    ce = F.cross_entropy(logits[:, :-1].flatten(0, 1), batch["labels"][:, 1:].flatten(), ignore_index=-100)
    torch.testing.assert_close(out.losses["txt"], ce)
    bce, dice, n = mask_losses([d.logits for d in out.masks], batch["masks"])
    assert n == out.n_masks == 2
    torch.testing.assert_close(out.losses["bce"], bce)
    torch.testing.assert_close(out.losses["dice"], dice)
    torch.testing.assert_close(out.losses["mask"], 2 * bce + 0.5 * dice)
    torch.testing.assert_close(out.losses["total"], ce + 2 * bce + 0.5 * dice)


# ------------------------------------------------------------------------------------------------------------
# Bad input
# ------------------------------------------------------------------------------------------------------------
def test_mask_size_mismatch_names_the_sample(tiny):
    _, proc = tiny
    image, mask = synthetic(0)
    with pytest.raises(ValueError, match="case-17"):
        proc.sample(image, "Please segment it.", "It is [SEG].", np.zeros((mask.shape[0] + 1, mask.shape[1]), bool),
                    "case-17")
    with pytest.raises(ValueError, match="case-18"):
        proc.sample(image, "Please segment it.", "It is [SEG].", mask.T, "case-18")


def test_query_overflow_names_the_sample(tiny):
    _, proc = tiny
    image, mask = synthetic(1)
    with pytest.raises(ValueError, match="too-long-3"):
        proc.sample(image, "segment the lesion " * 600, "It is [SEG].", mask, "too-long-3")


def test_collate_empty_batch(tiny):
    _, proc = tiny
    with pytest.raises(ValueError, match="empty"):
        proc.collate([])


def test_tiny_sam_dense_prompt_depends_on_the_mask():
    """The tiny preset must see RVLS2M's region: two different region masks give different dense prompts."""
    from omegaconf import OmegaConf

    from sim4seg.model.sam import build_sam

    sam = build_sam(OmegaConf.create({"kind": "tiny", "checkpoint": None, "img_size": 128, "embed_dim": 32,
                                      "vit_dim": 32, "depth": 2})).eval()
    size = sam.prompt_encoder.mask_input_size
    empty, half = torch.zeros(1, 1, *size), torch.zeros(1, 1, *size)
    half[..., : size[0] // 2, :] = 1.0
    with torch.no_grad():
        _, d_empty = sam.prompt_encoder(points=None, boxes=None, masks=empty)
        _, d_half = sam.prompt_encoder(points=None, boxes=None, masks=half)
    assert not torch.allclose(d_empty, d_half)
