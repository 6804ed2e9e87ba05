"""``tts``: test-time scaling m=4 paths x n=4 perturbations (sim4seg.evaluation.rows.generate_rows, as eval runs
it) vs one plain pass and vs 16 independent sampled passes."""

from __future__ import annotations

import math
import tempfile
import time
from pathlib import Path

import torch
from transformers import LogitsProcessor, LogitsProcessorList

from sim4seg.bench.common import Report, build, median, timed, write_dataset


class ForceSegFixedLength(LogitsProcessor):
    """A random model rarely says [SEG]: step 0 says it; afterwards [SEG] and EOS are suppressed, so every path
    has exactly one mask and max_new_tokens tokens (the same work in every run). scores [R, V] -> [R, V]"""

    def __init__(self, seg_id: int, eos_id: int | None, prompt_len: int):
        self.seg_id, self.eos_id, self.prompt_len = seg_id, eos_id, prompt_len

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if input_ids.shape[1] == self.prompt_len:
            forced = torch.full_like(scores, -math.inf)
            forced[:, self.seg_id] = 0
            return forced
        scores = scores.clone()
        scores[:, [i for i in (self.seg_id, self.eos_id) if i is not None]] = -math.inf
        return scores


def run(rep: Report, quick: bool, repeats: int) -> None:
    from sim4seg.config import compose
    from sim4seg.data.dataset import M3DSDataset, collate
    from sim4seg.evaluation.rows import generate_rows
    from sim4seg.evaluation.tts import RowSampler

    m, n, n_indep = 4, 4, 16
    max_new = 8 if quick else 64
    preset = "tiny" if quick else "demo"
    _, model, proc = build([f"model={preset}"])
    model.eval()
    with tempfile.TemporaryDirectory() as tmp:
        root = write_dataset(Path(tmp) / "data", 3)
        ds = M3DSDataset(root, "train", proc, "cot", with_answer=False)
        batch0 = collate(proc, [ds[0]], left_pad=True)
    cfgs = {k: compose("eval", [f"tts.m={mm}", f"tts.n={nn}", f"max_new_tokens={max_new}"])
            for k, (mm, nn) in {"plain": (1, 1), "tts": (m, n)}.items()}
    tok = proc.tokenizer
    force = ForceSegFixedLength(model.seg_token_id, tok.eos_token_id, batch0["input_ids"].shape[1])
    t_cfg = cfgs["tts"].tts
    rep.say(f"tts: {preset} preset, 1 image {batch0['orig_hw'][0]}, {max_new} new tokens per path ([SEG] forced at "
            f"step 0, EOS suppressed), m={m} x n={n} vs 1 pass and {n_indep} passes, "
            f"{torch.get_num_threads()} thread(s), {repeats} repeat(s)")

    def one(cfg, sample_seed: int | None = None) -> list[dict]:
        """What eval does per batch: SAM embeddings once, then generate_rows (generation, perturbed decoding,
        selection and scoring). ``sample_seed``: this pass samples its path (an independent pass)."""
        b = dict(batch0)
        b["sam_embeddings"] = model.encode_images(b.pop("sam_images"))
        procs = [force] + ([RowSampler([sample_seed], t_cfg.temperature, t_cfg.top_p)] if sample_seed is not None else [])
        rows, _ = generate_rows(model, proc, b, cfg, ds.vocab, "cot", LogitsProcessorList(procs))
        if "error" in rows[0] or rows[0]["n_seg"] != 1:
            raise AssertionError(f"tts: expected one mask per path, got {rows[0]}")
        return rows

    t_plain, t_tts, t_pass = [], [], []
    with torch.no_grad():
        one(cfgs["plain"])  # warm-up
        for _ in range(repeats):
            t_plain.append(timed(lambda: one(cfgs["plain"]))[0])
            t_tts.append(timed(lambda: one(cfgs["tts"]))[0])
        rows = one(cfgs["tts"])
        if set(rows[0]["tts"]) != {f"m={m},n={n}"}:
            raise AssertionError(f"tts: unexpected TTS grid {list(rows[0]['tts'])}")
        # 16 independent passes (each: encode + sampled generation + decode), measured once; each pass timed.
        tic = time.perf_counter()
        for i in range(n_indep):
            t_pass.append(timed(lambda i=i: one(cfgs["plain"], sample_seed=i))[0])
        t_16 = time.perf_counter() - tic
    p, t = median(t_plain), median(t_tts)
    rows_t = [("one plain pass (m=1, n=1)", 1, p, 1.0), (f"TTS m={m} x n={n} (generate_rows)", m * n, t, t / p),
              (f"{n_indep} independent passes (measured)", n_indep, t_16, t_16 / p),
              (f"{n_indep} x median single sampled pass", n_indep, n_indep * median(t_pass), n_indep * median(t_pass) / p)]
    rep.table(("run", "masks", "s", "x plain"), rows_t)
    for (name, k, s, x), runs in zip(rows_t, (t_plain, t_tts, t_pass, t_pass)):
        rep.emit(run=name, masks=k, seconds=s, over_plain=x, runs=runs)
    over_plain, speedup = t / p, t_16 / t
    rep.target("tts<=4x_plain", over_plain <= 4, f"TTS m={m} x n={n} costs {over_plain:.2f}x one plain pass "
               f"({t:.2f} s vs {p:.2f} s; target <= 4x)")
    rep.target("tts>=4x_faster_than_16", speedup >= 4, f"TTS is {speedup:.2f}x faster than {n_indep} independent "
               f"passes ({t:.2f} s vs {t_16:.2f} s; target >= 4x)")
    rep.headline("speedup_vs_16_passes", speedup, tts_over_plain=over_plain, seconds_tts=t, seconds_plain=p,
                 seconds_16_passes=t_16, preset=preset, max_new_tokens=max_new, m=m, n=n, quick=quick)
