"""GPU memory of one Sim4Seg training step, per GPU, from the models' published configs (issue 14.5; README
"Memory"). Prints a Markdown table.

    python scripts/memory_table.py [--text-tokens 256] [--gpus 1 2 8]

Every model is built from its published config on PyTorch's meta device (shapes only, no memory), inside the
Sim4Seg module, and the trainable set is the one training would use: the presets' ``model.lora`` (LoRA r on the
language model's q/v projections) and ``model.trainable`` regexes (lm_head, embed_tokens, phi, the SAM mask decoder)
applied to the module's real parameter names. Bytes per parameter and per token:

- weights: bf16 (2 B) for everything; QLoRA (``model.quantization=nf4``): the language model's linear weights in
  NF4 with double quantisation (4 bits + one 8-bit scale per 64 weights + one fp32 scale per 256 scales:
  0.516 B), the rest (embeddings, lm_head, norms, biases, vision tower, projector, SAM, phi, LoRA) bf16;
- gradients: bf16 (2 B) per trainable parameter; optimizer: AdamW's fp32 master weights, first and second moments
  (12 B) per trainable parameter (mixed-precision Adam, as in the ZeRO paper); ZeRO-2 shards both over the GPUs,
  weights are replicated;
- activations per sample (micro-batch ``train.micro_batch`` of train/paper.yaml), sequence s = image tokens + text
  tokens, gradient checkpointing on (the presets' ``gradient_checkpointing: true``): every decoder layer keeps its
  input (2h B per token), one layer at a time is recomputed in the backward pass and holds its saved tensors
  (12h + 4h_kv + 8I B per token with SDPA: the two norms' inputs and outputs, q, k, v, the attention output, and
  SwiGLU's gate, act(gate), up and their product), and the logits over the vocabulary V hold 10 B per token
  (bf16 logits, the fp32 copy the loss takes, its gradient). h hidden size, h_kv the key/value width, I the MLP
  width. The frozen vision tower and SAM image encoder keep no activations (no gradient flows into them; with
  ``train.cache_sam_embeddings`` the SAM encoder does not even run) and their transient forward peak is not
  counted; neither are the SAM decoder's small activations, DeepSpeed's communication buckets, the CUDA context
  (~0.5-1 GiB) and allocator slack.
"""

from __future__ import annotations

import argparse
import re
import sys
from dataclasses import dataclass

import torch
from torch import nn

GIB = 2**30
NF4_BYTES = 0.5 + 1 / 64 + 4 / (64 * 256)

# Published configs (config.json of each release; LISA-7B-v1: LLaVA-Lightning-7B-v1-1, LLaMA-7B + CLIP ViT-L/14 at
# 224 px, LISA's single-Linear projector as transformers' projector with an identity linear_2, as convert-lisa
# writes it; its tokenizer adds [SEG], <image>, <im_start>, <im_end>).
LLAMA_7B = {"vocab_size": 32000 + 4, "hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32,
            "num_attention_heads": 32, "num_key_value_heads": 32, "max_position_embeddings": 2048}
CLIP_L14_224 = {"hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 24, "num_attention_heads": 16,
                "image_size": 224, "patch_size": 14, "projection_dim": 768}
QWEN_VISION = {"depth": 32, "hidden_size": 1280, "intermediate_size": 3420, "num_heads": 16, "patch_size": 14,
               "spatial_merge_size": 2, "temporal_patch_size": 2, "window_size": 112,
               "fullatt_block_indexes": [7, 15, 23, 31]}
QWEN_7B = {"vocab_size": 152064, "hidden_size": 3584, "intermediate_size": 18944, "num_hidden_layers": 28,
           "num_attention_heads": 28, "num_key_value_heads": 4, "tie_word_embeddings": False}
QWEN_3B = {"vocab_size": 151936, "hidden_size": 2048, "intermediate_size": 11008, "num_hidden_layers": 36,
           "num_attention_heads": 16, "num_key_value_heads": 2, "tie_word_embeddings": True}


def llava_7b() -> nn.Module:
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    return LlavaForConditionalGeneration(LlavaConfig(
        vision_config=CLIPVisionConfig(**CLIP_L14_224), text_config=LlamaConfig(**LLAMA_7B),
        projector_hidden_act="linear", image_token_index=32000, vision_feature_layer=-2))


def qwen2_5_vl(text: dict) -> nn.Module:
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    tie = text["tie_word_embeddings"]
    return Qwen2_5_VLForConditionalGeneration(Qwen2_5_VLConfig(
        text_config={k: v for k, v in text.items() if k != "tie_word_embeddings"},
        vision_config={**QWEN_VISION, "out_hidden_size": text["hidden_size"]}, tie_word_embeddings=tie))


@dataclass
class Setup:
    name: str
    preset: str  # the model preset whose lora, trainable set and image size the run uses
    lvlm: object  # () -> the LVLM, built on the meta device
    sam: str  # model.sam.kind


SETUPS = [Setup("LISA-7B + SAM ViT-H", "lisa_7b", llava_7b, "vit_h"),
          Setup("Qwen2.5-VL-7B + SAM2-L", "qwen2_5_vl_7b", lambda: qwen2_5_vl(QWEN_7B), "sam2_hiera_l"),
          Setup("Qwen2.5-VL-3B + SAM2-L", "qwen2_5_vl_7b", lambda: qwen2_5_vl(QWEN_3B), "sam2_hiera_l")]


def build_sam(kind: str) -> nn.Module:
    if kind == "sam2_hiera_l":
        from sim4seg.model.sam2 import HIERA, _assemble

        return _assemble(HIERA[kind], 1024, 256, mask_channels=16, mlp_dim=2048, heads=8)
    from segment_anything import sam_model_registry

    return sam_model_registry[kind](checkpoint=None)


@dataclass
class Counts:
    """Parameters of one setup: all, those trained (LoRA and in full), the quantisable linear weights, and the sizes
    the activation formula needs."""

    total: int
    trainable: int
    lora: int
    quantised: int
    layers: int
    hidden: int
    kv: int
    mlp: int
    vocab: int
    image_tokens: int


def count(setup: Setup) -> Counts:
    from sim4seg.config import compose
    from sim4seg.model.rvls2m import RVLS2MConfig
    from sim4seg.model.sim4seg import Sim4Seg

    cfg = compose("train", [f"model={setup.preset}"])
    with torch.device("meta"):
        lvlm = setup.lvlm()
        model = Sim4Seg(lvlm, build_sam(setup.sam), seg_token_id=0, image_token_id=1, rvls2m_cfg=RVLS2MConfig())
    full = re.compile("|".join(cfg.model.trainable))
    params = dict(model.named_parameters())  # shared (tied) tensors once
    trained = sum(p.numel() for n, p in params.items() if full.search(n))
    r = cfg.model.lora.r
    lora = sum(r * (m.in_features + m.out_features) for n, m in lvlm.named_modules()
               if isinstance(m, nn.Linear) and re.fullmatch(cfg.model.lora.target, n))
    layers = lvlm.model.language_model.layers
    quantised = sum(m.weight.numel() for m in layers.modules() if isinstance(m, nn.Linear))
    text = lvlm.config.get_text_config()
    attn = layers[0].self_attn
    return Counts(total=sum(p.numel() for p in params.values()) + lora, trainable=trained + lora, lora=lora,
                  quantised=quantised, layers=len(layers), hidden=text.hidden_size, kv=attn.k_proj.out_features,
                  mlp=text.intermediate_size, vocab=text.vocab_size, image_tokens=image_tokens(setup, cfg, lvlm))


def image_tokens(setup: Setup, cfg, lvlm: nn.Module) -> int:
    """LLaVA: one token per CLIP patch ("default" drops the class token). Qwen2.5-VL: the preset's max_pixels over
    (28 px)^2, one token per 2 x 2 merged 14-px patches (a large image is resized down to max_pixels)."""
    if setup.preset == "lisa_7b":
        v = lvlm.config.vision_config
        return (v.image_size // v.patch_size) ** 2
    merged = QWEN_VISION["patch_size"] * QWEN_VISION["spatial_merge_size"]
    return cfg.model.lvlm.image.max_pixels // merged**2


def memory(c: Counts, qlora: bool, gpus: int, batch: int, text_tokens: int) -> dict[str, float]:
    """GiB per GPU of one training step under ZeRO-2 over ``gpus`` (see the module docstring)."""
    weights = 2 * c.total
    if qlora:
        weights -= (2 - NF4_BYTES) * c.quantised
    s = c.image_tokens + text_tokens
    per_token = c.layers * 2 * c.hidden + (12 * c.hidden + 4 * c.kv + 8 * c.mlp) + 10 * c.vocab
    return {"weights": weights / GIB, "gradients": 2 * c.trainable / gpus / GIB,
            "optimizer": 12 * c.trainable / gpus / GIB, "activations": batch * s * per_token / GIB}


def table(text_tokens: int, gpus: list[int]) -> str:
    from sim4seg.config import compose

    batch = compose("train").train.micro_batch
    rows = ["| model | base weights | GPUs (ZeRO-2) | weights | gradients | optimizer | activations | total / GPU |",
            "|---|---|---|---|---|---|---|---|"]
    notes = []
    for setup in SETUPS:
        c = count(setup)
        notes.append(f"- {setup.name}: {c.total / 1e9:.2f} B parameters, {c.trainable / 1e6:.0f} M trained "
                     f"(LoRA {c.lora / 1e6:.1f} M), {c.quantised / 1e9:.2f} B in NF4 under QLoRA; sequence "
                     f"{c.image_tokens} image + {text_tokens} text tokens, micro-batch {batch}")
        for qlora in (False, True):
            for n in gpus:
                m = memory(c, qlora, n, batch, text_tokens)
                cells = " | ".join(f"{m[k]:.1f}" for k in ("weights", "gradients", "optimizer", "activations"))
                rows.append(f"| {setup.name} | {'NF4 (QLoRA)' if qlora else 'bf16'} | {n} | {cells} | "
                            f"**{sum(m.values()):.1f}** |")
    return "\n".join(rows) + "\n\nGiB per GPU.\n" + "\n".join(notes)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--text-tokens", type=int, default=256, help="text tokens per sample (prompt + answer)")
    p.add_argument("--gpus", type=int, nargs="+", default=[1, 2, 8])
    args = p.parse_args(argv)
    print(table(args.text_tokens, args.gpus))
    return 0


if __name__ == "__main__":
    sys.exit(main())
