"""The GPU check's configurations: DeepSpeed training steps, KV-cache vs no-cache generation, and the frozen SAM
encoders' fast path (sim4seg.model.fast_encoder) against the library's forward on the GPU. Each returns a result
dict (``config``, ``status`` and its figures); see gpu_check.py."""

from __future__ import annotations

import statistics
import time

from gpu_check_model import build, flops_per_step, log, make_batches, param_counts, peak_flops


def _sync(dev):
    import torch

    return torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)


def run_train(args, grad_ckpt: bool) -> dict:
    """``args.steps`` steps exactly as sim4seg.training runs them: engine(batch) -> backward -> step."""
    import torch

    from sim4seg.runtime import device, init_distributed
    from sim4seg.training.batches import to_device
    from sim4seg.training.optim import initialize

    init_distributed()  # chooses DeepSpeed's accelerator (cpu without CUDA) before deepspeed is used

    dev = device()
    torch.manual_seed(0)
    model, proc, cfg = build(args.tiny, grad_ckpt, dev)
    cfg.train.micro_batch, cfg.train.grad_accum = args.micro_batch, 1
    counts = param_counts(model)
    batches = make_batches(proc, args.micro_batch, 4, args.tiny)
    engine, _ = initialize(model, cfg, 1, args.steps, dev)  # training's AdamW, DeepSpeed config, fp32 prompt encoder
    dtype = torch.bfloat16 if engine.bfloat16_enabled() else torch.float32
    engine.train()
    sync = _sync(dev)
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
    return {"config": f"train_gc_{'on' if grad_ckpt else 'off'}", "status": "ok", "steps": args.steps,
            "micro_batch": args.micro_batch, "step_s": step_s, "samples_per_s": args.micro_batch / step_s,
            "tokens_per_step": tok, "tokens_per_s": tok / step_s, "tflops_per_s": f_lm / step_s / 1e12,
            "mfu": f_lm / step_s / peak if peak else None, "mfu_with_encoders": f_all / step_s / peak if peak else None,
            "peak_mem_gb": torch.cuda.max_memory_allocated(dev) / 2**30 if dev.type == "cuda" else None,
            "loss_first": losses[0], "loss_last": losses[-1], "params": counts, "step_times": times}


def run_generate(args) -> dict:
    """``args.gen_tokens`` new tokens for one prompt: Sim4Seg.generate (KV cache) vs the no-cache loop."""
    import torch

    from sim4seg.bench.generate import lisa_no_cache_generate
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
    sync = _sync(dev)
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


def _encoders(tiny: bool) -> dict:
    """name -> frozen fast encoder (fp32, CPU): LiteMedSAM's TinyViT and a random SAM ViT-H (tiny: the tiny ViT)."""
    from omegaconf import OmegaConf

    from sim4seg.config import compose
    from sim4seg.model.sam import build_sam

    specs = {"tiny_vit": OmegaConf.to_container(compose("train", ["model=tiny"]).model.sam)} if tiny else {
        "litemedsam": {"kind": "litemedsam", "checkpoint": None}, "vit_h": {"kind": "vit_h", "random_init": True}}
    return {name: build_sam(OmegaConf.create(spec)).image_encoder.eval().requires_grad_(False)
            for name, spec in specs.items()}


def run_encoder(args) -> dict:
    """Per encoder and dtype (fp32; bf16 on the GPU): the library's forward vs ``fast_forward`` on a batch of
    synthetic-noise images, median ms per image, and each output's max abs difference from the fp32 library
    forward. The builder runs the fast path on the CPU only; these figures decide whether the GPU should too."""
    import torch

    from sim4seg.runtime import device

    dev = device()
    sync = _sync(dev)
    dtypes = (torch.float32, torch.bfloat16) if dev.type == "cuda" else (torch.float32,)
    batch, reps = (1, 1) if args.tiny else (args.encoder_batch, 5)
    rows = []
    for name, enc in _encoders(args.tiny).items():
        enc.to(dev)
        torch.manual_seed(0)
        x = torch.randn(batch, 3, enc.img_size, enc.img_size, device=dev)
        library = super(type(enc), enc).forward  # the class the fast path subclasses
        with torch.no_grad():
            ref32 = library(x).float()
            for dtype in dtypes:
                enc.to(dtype)
                xd = x.to(dtype)
                times = {"library": [], "fast": []}
                outs = {}
                for r in range(reps + 1):  # the first round warms up (cuDNN autotuning, oneDNN kernels)
                    for k, fn in (("library", library), ("fast", enc.fast_forward)):
                        sync()
                        t0 = time.perf_counter()
                        outs[k] = fn(xd)
                        sync()
                        if r:
                            times[k].append(1e3 * (time.perf_counter() - t0) / batch)
                lib, fast = (statistics.median(times[k]) for k in ("library", "fast"))
                rows.append({"encoder": name, "dtype": str(dtype).removeprefix("torch."), "batch": batch,
                             "library_ms_per_image": lib, "fast_ms_per_image": fast, "speedup": lib / fast,
                             "library_max_abs_diff": (outs["library"].float() - ref32).abs().max().item(),
                             "fast_max_abs_diff": (outs["fast"].float() - ref32).abs().max().item()})
                log(f"  {name} {rows[-1]['dtype']}: library {lib:.1f} ms/image, fast {fast:.1f} ms/image "
                    f"({lib / fast:.2f}x); max abs diff from fp32 library: library {rows[-1]['library_max_abs_diff']:.2e}, "
                    f"fast {rows[-1]['fast_max_abs_diff']:.2e}")
        enc.to("cpu", torch.float32)
        if dev.type == "cuda":
            torch.cuda.empty_cache()
    fp32_ok = all(r["fast_max_abs_diff"] <= 1e-3 for r in rows if r["dtype"] == "float32")
    return {"config": "encoder", "status": "ok" if fp32_ok else "mismatch", "encoders": rows,
            **({} if fp32_ok else {"error": "fp32 fast path differs from the library by more than 1e-3"})}


RUNS = {"train_gc_on": lambda a: run_train(a, True), "train_gc_off": lambda a: run_train(a, False),
        "generate": run_generate, "encoder": run_encoder}
