"""``generate``: KV-cached generation (Sim4Seg.generate) vs LISA's no-cache loop (whole sequence re-run per token),
same greedy tokens asserted, for both LVLM families (LLaVA, then Qwen2.5-VL with its mrope positions)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from sim4seg.bench.common import Report, build, median, timed


def prompt_batch(model, proc, n_image: int = 1) -> dict:
    """A left-padded prompt batch of synthetic dermoscopy images with their SAM embeddings."""
    from sim4seg.data.synthetic import make_sample

    samples = []
    for i in range(n_image):
        image, _ = make_sample("SynthDerm", "malignant", 7 + i)
        samples.append(proc.sample(image, "Please segment the skin lesion. What is the diagnosis?", None, None, f"p{i}"))
    batch = proc.collate(samples, left_pad=True)
    with torch.no_grad():
        batch["sam_embeddings"] = model.encode_images(batch.pop("sam_images"))
    return batch


def lisa_no_cache_generate(lvlm, batch: dict, n_new: int, suppress: Sequence[int]) -> list[int]:
    """LISA's decoding loop: every step re-runs the LVLM (vision tower included) over the whole sequence and
    takes the argmax of the last logits; ``suppress`` ids get -inf (as transformers' min_new_tokens does to EOS;
    the image placeholder too, as Sim4Seg.generate does). Qwen2.5-VL also gets its ``image_grid_thw`` and the
    ``mm_token_type_ids`` of each step's sequence (its 3D positions are recomputed every step)."""
    seq, attn, pix = batch["input_ids"], batch["attention_mask"], batch["pixel_values"]
    image_id = lvlm.config.image_token_id if "image_grid_thw" in batch else lvlm.config.image_token_index
    out = []
    with torch.no_grad():
        for _ in range(n_new):
            qwen = {"image_grid_thw": batch["image_grid_thw"], "mm_token_type_ids": (seq == image_id).int()} \
                if "image_grid_thw" in batch else {}
            logits = lvlm(input_ids=seq, pixel_values=pix, attention_mask=attn, **qwen).logits[:, -1].float()
            logits[:, image_id] = -math.inf
            logits[:, list(suppress)] = -math.inf
            nxt = logits.argmax(-1)
            out.append(int(nxt[0]))
            seq = torch.cat([seq, nxt[:, None]], 1)
            attn = torch.cat([attn, attn.new_ones((attn.shape[0], 1))], 1)
    return out


def presets(quick: bool) -> dict[str, list[str]]:
    """Per family: the preset and its sizes. Full size: about 576 image tokens and a 4-layer, 256-wide language
    model in both (Qwen2.5-VL: the image resized to 24 x 24 tokens of 28 px; mrope over its 32 rotary dimensions
    in Qwen's 2:3:3 ratio)."""
    text = [] if quick else ["model.lvlm.text.hidden_size=256", "model.lvlm.text.intermediate_size=512",
                             "model.lvlm.text.num_hidden_layers=4"]
    img = 32 if quick else 96
    pixels = 28 * 28 * (16 if quick else 576)
    return {"llava": ["model=tiny", "model.lora.enabled=false", f"model.lvlm.vision.image_size={img}",
                      "model.lvlm.vision.patch_size=4", "model.lvlm.text.max_position_embeddings=2048", *text],
            "qwen2_5_vl": ["model=tiny_qwen2_5_vl", "model.lora.enabled=false", f"model.lvlm.image.min_pixels={pixels}",
                           f"model.lvlm.image.max_pixels={pixels}", "model.lvlm.text.max_position_embeddings=2048",
                           "model.max_length=2048", *text,
                           *([] if quick else ["model.lvlm.text.rope_parameters.mrope_section=[8,12,12]"])]}


def measure(rep: Report, family: str, overrides: list[str], n_new: int, repeats: int) -> dict:
    """Cached vs no-cache generation of one family: identical tokens asserted; seconds and sizes."""
    _, model, proc = build(overrides)
    model.eval()
    batch = prompt_batch(model, proc)
    n_img = int((batch["input_ids"] == model.image_token_id).sum())
    tok = proc.tokenizer
    eos, pad = tok.eos_token_id, tok.pad_token_id
    prompt_len = batch["input_ids"].shape[1]
    t_cfg = model.lvlm.config.get_text_config()
    rep.say(f"generate ({family}): text hidden {t_cfg.hidden_size} x {t_cfg.num_hidden_layers} layers, {n_img} image "
            f"tokens, prompt {prompt_len} tokens, {n_new} new tokens (greedy, EOS suppressed), tiny SAM, "
            f"{torch.get_num_threads()} thread(s), {repeats} repeat(s)")

    def cached(n: int) -> list[int]:
        # min_new_tokens: transformers' MinNewTokensLengthLogitsProcessor gives EOS -inf, so exactly n tokens.
        g = model.generate(batch, max_new_tokens=n, min_new_tokens=n, eos_token_id=eos, pad_token_id=pad)
        return g[0].tokens

    cached(2)  # warm-up (allocator, lazy init)
    lisa_no_cache_generate(model.lvlm, batch, 2, [eos])
    t_ours, t_base = [], []
    for _ in range(repeats):
        dt, ours = timed(lambda: cached(n_new))
        t_ours.append(dt)
        dt, base = timed(lambda: lisa_no_cache_generate(model.lvlm, batch, n_new, [eos]))
        t_base.append(dt)
        if ours != base:
            first = next(i for i, (a, b) in enumerate(zip(ours + [None], base + [None])) if a != b)
            raise AssertionError(f"generate ({family}): KV-cached and no-cache tokens differ from position {first}: "
                                 f"{ours[first:first + 5]} vs {base[first:first + 5]}")
        if len(ours) != n_new:
            raise AssertionError(f"generate ({family}): {len(ours)} tokens instead of {n_new}")
    mo, mb = median(t_ours), median(t_base)
    rows = [(f"KV cache (Sim4Seg.generate), {family}", n_new, mo, n_new / mo),
            (f"no cache (LISA loop), {family}", n_new, mb, n_new / mb)]
    rep.table(("implementation", "tokens", "s (median)", "tokens/s"), rows)
    for (name, n, s, tps), runs in zip(rows, (t_ours, t_base)):
        rep.emit(impl=name, family=family, tokens=n, seconds=s, tokens_per_s=tps, runs=runs)
    speedup = mb / mo
    rep.say(f"{family}: speedup {speedup:.1f}x; identical tokens asserted ({n_new} tokens x {repeats} runs)")
    rep.target("speedup>=10" + ("" if family == "llava" else f"_{family}"), speedup >= 10,
               f"{family}: KV-cached generation {speedup:.1f}x faster than the no-cache loop (target >= 10x; "
               f"{n_new / mo:.1f} vs {n_new / mb:.1f} tokens/s)")
    return {"speedup": speedup, "cached": n_new / mo, "no_cache": n_new / mb, "image_tokens": n_img,
            "prompt_tokens": prompt_len}


def run(rep: Report, quick: bool, repeats: int) -> None:
    n_new = 8 if quick else 128
    res = {family: measure(rep, family, overrides, n_new, repeats) for family, overrides in presets(quick).items()}
    llava, qwen = res["llava"], res["qwen2_5_vl"]
    rep.headline("speedup", llava["speedup"], tokens_per_s_cached=llava["cached"],
                 tokens_per_s_no_cache=llava["no_cache"], new_tokens=n_new, image_tokens=llava["image_tokens"],
                 prompt_tokens=llava["prompt_tokens"], speedup_qwen2_5_vl=qwen["speedup"],
                 tokens_per_s_cached_qwen2_5_vl=qwen["cached"], image_tokens_qwen2_5_vl=qwen["image_tokens"],
                 identical_tokens=True, quick=quick)
