"""``app``: one request of the app (sim4seg.app.respond: read the file, preprocess (CLIP view, SAM frame,
tokens), SAM encoder, generation, mask decoding, output images) for a 512 x 512 PNG on the demo preset, split
into those stages. Target: at most 5 s per request on 2 CPU cores.

The demo preset's language model is random until trained, so the answer is fixed to the demo's own answer
length: [SEG] at the first step, then tokens up to the length of a diagnosis answer ("It is [SEG]. The
diagnosis is ..."), EOS suppressed; the same work in every run, with one mask decoded.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import torch
from PIL import Image
from transformers import LogitsProcessorList

from sim4seg.bench.common import Report, build
from sim4seg.bench.tts import ForceSegFixedLength

STAGES = ("reading", "preprocessing", "sam_encoder", "generation", "decoding", "output")
TARGET_S = 5.0


def run(rep: Report, quick: bool, repeats: int) -> None:
    from sim4seg.app import respond
    from sim4seg.data.prompts import answer_for
    from sim4seg.data.readers import ReadOptions
    from sim4seg.data.synthetic import make_sample
    from sim4seg.inference import Predictor

    preset, side = ("tiny", 128) if quick else ("demo", 512)
    cfg, model, proc = build([f"model={preset}", "data.answer_format=diagnosis"])
    question = "Please segment the lesion in this ultrasound image. Is it benign or malignant?"
    base = len(proc.tokens(question)[0])
    n_new = len(proc.tokens(question, answer_for("diagnosis", "x", ["malignant"], None))[0]) - base
    predictor = Predictor(model, proc, cfg, max_new_tokens=n_new, name=f"{preset} preset (random LVLM)")
    prompt_len = base  # generate_paths pads nothing for one image: the prompt is exactly these tokens
    image, _ = make_sample("SynthUS", "malignant", 0)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "scan.png"
        Image.fromarray(image).resize((side, side)).save(path)
        rep.say(f"app: one request, {preset} preset, {side}x{side} PNG, {n_new} new tokens ([SEG] first), "
                f"{torch.get_num_threads()} thread(s), {repeats} repeat(s) after one warm-up")
        for i in range(repeats + 1):
            force = LogitsProcessorList([ForceSegFixedLength(model.seg_token_id, proc.tokenizer.eos_token_id,
                                                             prompt_len)])
            t0 = time.perf_counter()
            _, pred = respond(predictor, path, question, ReadOptions(), out_dir=Path(tmp), logits_processor=force)
            total = time.perf_counter() - t0
            if i:  # the first request warms caches and allocators
                rows.append({**pred.timings, "total": total, "n_seg": pred.n_seg})
                rep.emit(repeat=i, **rows[-1])
    # The stages of the median request (so they add up to its total), not medians of each stage.
    med = sorted(rows, key=lambda r: r["total"])[len(rows) // 2]
    other = med["total"] - sum(med[k] for k in STAGES)  # selection, answer decoding, bookkeeping
    rep.table(["stage", "seconds", "share"],
              [[k, med[k], f"{100 * med[k] / med['total']:.0f}%"] for k in STAGES]
              + [["other", other, f"{100 * other / med['total']:.0f}%"], ["request", med["total"], ""]])
    rep.target("request<=5s", med["total"] <= TARGET_S, f"one app request {med['total']:.2f} s (target <= "
               f"{TARGET_S:.0f} s on 2 CPU cores)")
    rep.headline("request_s", med["total"], **{f"{k}_s": med[k] for k in STAGES}, preset=preset, side=side,
                 new_tokens=n_new, n_seg=med["n_seg"], quick=quick)
