"""``encoder``: LiteMedSAM's frozen TinyViT image encoder with the fast path (sim4seg.model.fast_encoder, what the
builder gives a frozen encoder) vs the unmodified encoder, in the same run: calls alternate image by image (one
image per call, as the embedding cache encodes a miss), medians of wall and CPU time, the embeddings' max abs
difference, FLOPs per image (torch's FlopCounterMode on the unmodified encoder: the same math) and the achieved
GFLOP/s against an fp32 matmul timed between the encoder calls, per wall second and per CPU second (the share of
the matmul rate is per CPU second: on shared cores the wall rates of both fall with the load)."""

from __future__ import annotations

import time

import torch
from omegaconf import OmegaConf

from sim4seg.bench.common import Report, build, median

SUBSETS = (("SynthDerm", "malignant"), ("SynthUS", "benign"), ("SynthChest", "nodule"))  # one image each


def _timed_cpu(fn) -> tuple[float, float, torch.Tensor]:
    """(wall s, process CPU s, output): CPU time barely moves when other processes take the cores."""
    t, c = time.perf_counter(), time.process_time()
    out = fn()
    return time.perf_counter() - t, time.process_time() - c, out


def run(rep: Report, quick: bool, repeats: int) -> None:
    from torch.utils.flop_counter import FlopCounterMode

    from sim4seg.data.synthetic import make_sample
    from sim4seg.model.sam import build_sam

    cfg, model, proc = build(["model=demo"])
    fast = model.eval().sam.image_encoder
    sam_cfg = OmegaConf.to_container(cfg.model.sam, resolve=True)
    unmodified = build_sam(OmegaConf.create({**sam_cfg, "fast_encoder": False})).image_encoder
    unmodified.eval().requires_grad_(False)
    subsets = SUBSETS[:1] if quick else SUBSETS
    images = [proc.sam(make_sample(sub, label, 0)[0])[0][None] for sub, label in subsets]  # [1, 3, S, S] each
    n_mm = 1024 if quick else 2048
    a = torch.randn(n_mm, n_mm)
    impls = {f"fast ({type(fast).__name__})": fast, f"unmodified ({type(unmodified).__name__})": unmodified}
    names = list(impls)
    with torch.no_grad():
        with FlopCounterMode(display=False) as counter:
            unmodified(images[0])
        flops = counter.get_total_flops()
        rep.say(f"encoder: {cfg.model.sam.kind} image encoder, {images[0].shape[-1]} px input, {len(images)} "
                f"synthetic image(s) x {repeats} repeat(s), one image per call, calls alternating; "
                f"{flops / 1e9:.1f} GFLOP per image (FlopCounterMode); {torch.get_num_threads()} thread(s)")
        for f in impls.values():  # warm-up (allocator, oneDNN kernel creation)
            f(images[0])
        a @ a
        wall: dict[str, list[float]] = {k: [] for k in names}
        cpu: dict[str, list[float]] = {k: [] for k in names}
        mm: list[tuple[float, float]] = []  # (wall, CPU) seconds
        max_diff = 0.0
        for _ in range(repeats):
            for x in images:
                outs = {}
                for k in names:
                    w, c, outs[k] = _timed_cpu(lambda k=k, x=x: impls[k](x))
                    wall[k].append(w)
                    cpu[k].append(c)
                max_diff = max(max_diff, (outs[names[0]] - outs[names[1]]).abs().max().item())
                mm.append(_timed_cpu(lambda: a @ a)[:2])
    mm_flop = 2 * n_mm**3
    matmul, matmul_cpu = mm_flop / median([w for w, _ in mm]) / 1e9, mm_flop / median([c for _, c in mm]) / 1e9
    rows = []
    for k in names:
        s, c = median(wall[k]), median(cpu[k])
        rows.append((k, s, 1 / s, c, flops / s / 1e9, flops / c / 1e9, 100 * flops / c / 1e9 / matmul_cpu))
        rep.emit(impl=k, s_per_image=s, images_per_s=1 / s, cpu_s_per_image=c, gflops=flops / s / 1e9,
                 gflops_per_cpu_s=flops / c / 1e9, pct_of_matmul=100 * flops / c / 1e9 / matmul_cpu, runs=wall[k])
    rows.append((f"fp32 matmul {n_mm}^2 (same run)", "", "", "", matmul, matmul_cpu, 100.0))
    rep.emit(impl=f"matmul {n_mm}x{n_mm} fp32", gflops=matmul, gflops_per_cpu_s=matmul_cpu, runs=[w for w, _ in mm])
    rep.table(("implementation", "s/image", "images/s", "CPU s/image", "GFLOP/s", "GFLOP/CPU-s", "% of matmul"), rows)
    speedup = median(wall[names[1]]) / median(wall[names[0]])
    cpu_speedup = median(cpu[names[1]]) / median(cpu[names[0]])
    rep.say(f"speedup {speedup:.2f}x wall, {cpu_speedup:.2f}x CPU time; max abs difference of the embeddings "
            f"{max_diff:.2e} over {len(images)} image(s)")
    rep.target("speedup>=2", speedup >= 2, f"the fast encoder runs {speedup:.2f}x the unmodified one "
               f"({1 / median(wall[names[0]]):.2f} vs {1 / median(wall[names[1]]):.2f} images/s; target >= 2x)")
    rep.target("max_abs_diff<=1e-3", max_diff <= 1e-3, f"embeddings differ by at most {max_diff:.2e} "
               "(target <= 1e-3)")
    rep.headline("speedup", speedup, cpu_time_speedup=cpu_speedup, max_abs_diff=max_diff,
                 images_per_s_fast=1 / median(wall[names[0]]), images_per_s_unmodified=1 / median(wall[names[1]]),
                 gflop_per_image=flops / 1e9, gflops_fast=rows[0][4], gflops_unmodified=rows[1][4],
                 gflops_per_cpu_s_fast=rows[0][5], gflops_per_cpu_s_unmodified=rows[1][5], matmul_gflops=matmul,
                 matmul_gflops_per_cpu_s=matmul_cpu, pct_of_matmul_fast=rows[0][6], images=len(images), quick=quick)
