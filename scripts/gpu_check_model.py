"""The GPU check's model and data: a LISA-7B-size Sim4Seg with random weights composed through sim4seg.config
(the ``tiny`` preset resized, SAM ViT-H with ``model.sam.random_init``), synthetic CoT batches, FLOP counts."""

from __future__ import annotations

import contextlib
import gc
import re
import time

VOCAB_7B = 32003
PEAK_TFLOPS = {"H100": 989.4, "H200": 989.4, "H800": 989.4, "A100": 312.0, "A800": 312.0, "L40S": 362.0}
SIZES_7B = {  # model.* overrides on the tiny preset
    "dtype": "bfloat16",
    "max_length": 2048,
    "lvlm.vision": {"hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 24,
                    "num_attention_heads": 16, "image_size": 224, "patch_size": 14},
    "lvlm.text": {"hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32,
                  "num_attention_heads": 32, "num_key_value_heads": 32, "max_position_embeddings": 4096},
    "sam.kind": "vit_h",
}


def log(msg: str) -> None:
    print(msg, flush=True)


def overrides(tiny: bool, grad_ckpt: bool) -> list[str]:
    """Hydra overrides of the ``train`` config: tiny preset (resized to 7B unless ``tiny``), paper settings."""
    out = ["model=tiny", "train=paper", "deepspeed=zero2", "rvls2m=paper", "loss=paper", "wandb.mode=disabled",
           f"model.gradient_checkpointing={str(grad_ckpt).lower()}"]
    if not tiny:
        for key, value in SIZES_7B.items():
            items = value.items() if isinstance(value, dict) else [(None, value)]
            out += [f"model.{key}{'.' + k if k else ''}={v}" for k, v in items]
        out.append("+model.sam.random_init=true")
    return out


@contextlib.contextmanager
def default_dtype(dtype):
    import torch

    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


def build(tiny: bool, grad_ckpt: bool, dev):
    """(model on ``dev``, processor, the composed config). Full size: random LVLM weights created directly on the
    GPU in bf16 (CPU fallback), SAM ViT-H random on the CPU (the builder's random_init) then moved; the tiny BPE
    tokenizer's ids with the embeddings resized to 32,003 rows (LISA's vocabulary)."""
    import torch

    from sim4seg.config import compose
    from sim4seg.model.builder import build_model

    cfg = compose("train", overrides(tiny, grad_ckpt))
    t0 = time.time()
    if tiny:
        model, proc = build_model(cfg.model, cfg.rvls2m, cfg.loss)
    else:
        try:
            with torch.device(dev), default_dtype(torch.bfloat16):
                model, proc = build_model(cfg.model, cfg.rvls2m, cfg.loss)
        except Exception as e:  # noqa: BLE001 - any failure of the fast path: build on the CPU instead
            log(f"note: building on {dev} failed ({type(e).__name__}: {e}); building on the CPU (slower)")
            gc.collect()
            with default_dtype(torch.bfloat16):
                model, proc = build_model(cfg.model, cfg.rvls2m, cfg.loss)
        base = model.lvlm.get_base_model() if hasattr(model.lvlm, "get_base_model") else model.lvlm
        base.resize_token_embeddings(VOCAB_7B, mean_resizing=False)
        pattern = re.compile("|".join(cfg.model.trainable))
        for name, p in model.named_parameters():
            if "embed_tokens" in name or "lm_head" in name:
                p.requires_grad_(bool(pattern.search(name)))
    model.to(dev)
    log(f"built in {time.time() - t0:.1f} s: {param_counts(model)}")
    return model, proc, cfg


def param_counts(model) -> dict:
    base = model.lvlm.get_base_model() if hasattr(model.lvlm, "get_base_model") else model.lvlm

    def n(mods, trainable=False):
        return sum(p.numel() for m in mods for p in m.parameters() if p.requires_grad or not trainable)

    return {"language_model": n([base.model.language_model, base.lm_head]),
            "vision": n([base.model.vision_tower, base.model.multi_modal_projector]),
            "sam_encoder": n([model.sam.image_encoder]),
            "sam_prompt_decoder_phi": n([model.sam.prompt_encoder, model.sam.mask_decoder, model.text_hidden_fcs]),
            "trainable": n([model], trainable=True), "total": n([model])}


def make_batches(proc, mb: int, n_batches: int, tiny: bool, with_answer: bool = True) -> list[dict]:
    """Synthetic CoT training samples (1024x1280 images at full size, as M3DS images are), collated."""
    import cv2

    from sim4seg.data.prompts import answer_for, query_for
    from sim4seg.data.synthetic import SYNTH_SUBSETS, cot_for, make_sample

    names, out = list(SYNTH_SUBSETS), []
    for b in range(n_batches):
        samples = []
        for k in range(mb):
            i = b * mb + k
            sub = SYNTH_SUBSETS[names[i % 3]]
            label = sub.labels[i % len(sub.labels)]
            image, mask = make_sample(sub.name, label, i)
            if not tiny:
                image = cv2.resize(image, (1280, 1024), interpolation=cv2.INTER_LINEAR)
                mask = cv2.resize(mask, (1280, 1024), interpolation=cv2.INTER_NEAREST)
            rid = f"{sub.name}/{i:05d}"
            answer = answer_for("cot", rid, [label], cot_for(sub, label)) if with_answer else None
            samples.append(proc.sample(image, query_for(sub, rid), answer, mask > 0 if with_answer else None, rid))
        out.append(proc.collate(samples, left_pad=not with_answer))
    return out


def flops_per_step(counts: dict, tokens: int, images: int, n_vis_tokens: int, sam_patches: int) -> tuple[float, float]:
    """(language-model FLOPs, + forward-only encoders) of one step; see gpu_check.py's MFU heuristic."""
    lm = 6.0 * counts["language_model"] * tokens
    enc = 2.0 * counts["vision"] * images * (n_vis_tokens + 1) + 2.0 * counts["sam_encoder"] * images * sam_patches
    return lm, lm + enc


def peak_flops(args, dev) -> float | None:
    import torch

    if args.peak_tflops:
        return args.peak_tflops * 1e12
    if dev.type != "cuda":
        return None
    name = torch.cuda.get_device_name(dev)
    return next((v * 1e12 for k, v in PEAK_TFLOPS.items() if k in name), None)
