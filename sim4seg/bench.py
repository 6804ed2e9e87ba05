"""Benchmarks of the Sim4Seg pipeline. Every benchmark measures its baseline in the same run, interleaved with
the measured code where possible, repeats, and reports medians and ratios (the CPUs may be shared).

    python -m sim4seg.bench NAME [--json] [--quick] [--repeats R] [--threads T]
    scripts/bench.sh NAME [...]

NAME:
  generate    KV-cached generation (Sim4Seg.generate) vs LISA's no-cache loop (whole sequence re-run per token)
  tts         test-time scaling m=4 x n=4 (sim4seg.evaluation.rows.generate_rows) vs one plain pass and vs 16 passes
  train_step  one training step broken down by component, with and without the SAM-embedding cache
  loader      DataLoader throughput on 1024+ px images (1 and 2 workers) vs the model's consumption rate
  metrics     gIoU/cIoU over 1,000 masks of 1024x1024: sim4seg.metrics vs a plain per-mask numpy loop
  all         every benchmark above, in that order

A table goes to stdout (to stderr with ``--json``, which prints one JSON object per line on stdout instead; the
last line of each benchmark is its headline object ``{"benchmark", "headline", "value", ...}``). ``--quick``
uses tiny sizes (tests). A missed target is printed as ``target not met: ...`` with the figures.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import math
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

BENCHMARKS = ("generate", "tts", "train_step", "loader", "metrics")


# ----------------------------------------------------------------------------------------------------------
# Reporting and timing helpers
# ----------------------------------------------------------------------------------------------------------


class Report:
    """Collects a benchmark's JSON records; prints the human table to stdout (stderr with --json)."""

    def __init__(self, name: str, as_json: bool):
        self.name, self.as_json = name, as_json
        self.records: list[dict] = []
        self.targets: dict[str, dict] = {}

    @property
    def _text(self):
        return sys.stderr if self.as_json else sys.stdout

    def say(self, line: str = "") -> None:
        print(line, file=self._text, flush=True)

    def emit(self, **record: Any) -> dict:
        rec = {"benchmark": self.name, **{k: _jsonable(v) for k, v in record.items()}}
        self.records.append(rec)
        if self.as_json:
            print(json.dumps(rec), flush=True)
        return rec

    def table(self, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        cells = [[_fmt(c) for c in r] for r in [list(header), *rows]]
        widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
        for k, r in enumerate(cells):
            self.say("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))))
            if k == 0:
                self.say("  ".join("-" * w for w in widths))

    def target(self, key: str, met: bool, text: str) -> None:
        """Record a target; a missed one is printed as ``target not met: ...``."""
        self.targets[key] = {"met": bool(met), "text": text}
        self.say(("target met: " if met else "target not met: ") + text)

    def headline(self, key: str, value: float, **extra: Any) -> dict:
        return self.emit(headline=key, value=value, targets=self.targets, **extra)


def _jsonable(v: Any) -> Any:
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, (np.integer,)):
        return int(v)
    if isinstance(v, (float, np.floating)):
        v = float(v)
        return round(v, 6) if math.isfinite(v) else None
    return v


def _fmt(c: Any) -> str:
    if isinstance(c, float):
        return f"{c:.4g}" if abs(c) < 1000 else f"{c:.0f}"
    return str(c)


def median(xs: Sequence[float]) -> float:
    return float(statistics.median(xs))


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def compose_cfg(name: str, overrides: Sequence[str]):
    from sim4seg.config import compose

    return compose(name, overrides)


def build(overrides: Sequence[str], name: str = "train"):
    """(cfg, model, processor) of a composed config."""
    from sim4seg.model.builder import build_model

    cfg = compose_cfg(name, overrides)
    model, proc = build_model(cfg.model, cfg.rvls2m, cfg.loss)
    return cfg, model, proc


def write_dataset(root: Path, n: int, sizes: Sequence[tuple[int, int]] | None = None,
                  exts: Sequence[str] = (".png",), split: str = "train") -> Path:
    """An M3DS folder of ``n`` synthetic records, all in ``split``. ``sizes``: (H, W) cycled over the records
    (images upscaled bilinearly, masks nearest); ``exts``: image formats cycled (.png / .jpg)."""
    import cv2

    from sim4seg.data.prompts import query_for
    from sim4seg.data.schema import Record, append_records
    from sim4seg.data.synthetic import SYNTH_SUBSETS, cot_for, make_sample
    from sim4seg.data.vocab import subset_to_dict

    root.mkdir(parents=True, exist_ok=True)
    (root / "subsets.json").write_text(json.dumps({k: subset_to_dict(v) for k, v in SYNTH_SUBSETS.items()}))
    names, records = list(SYNTH_SUBSETS), []
    for i in range(n):
        sub = SYNTH_SUBSETS[names[i % len(names)]]
        label = sub.labels[(i // len(names)) % len(sub.labels)]
        image, mask = make_sample(sub.name, label, 1000 + i)
        if sizes:
            h, w = sizes[i % len(sizes)]
            image = cv2.resize(image, (w, h), interpolation=cv2.INTER_LINEAR)
            mask = cv2.resize(mask, (w, h), interpolation=cv2.INTER_NEAREST)
        rid = f"{sub.name}/{i:05d}"
        rel_img, rel_mask = f"images/{rid}{exts[i % len(exts)]}", f"masks/{rid}.png"
        for rel, arr in ((rel_img, image[..., ::-1]), (rel_mask, mask)):
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(root / rel), arr)
        records.append(Record(id=rid, subset=sub.name, modality=sub.modality, split=split, image=rel_img,
                              mask=rel_mask, query=query_for(sub, rid), diagnosis=[label], cot=cot_for(sub, label)))
    append_records(root, records)
    return root


# ----------------------------------------------------------------------------------------------------------
# 1. generate: KV cache vs LISA's no-cache loop
# ----------------------------------------------------------------------------------------------------------


def _prompt_batch(model, proc, n_image: int = 1) -> dict:
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
    takes the argmax of the last logits; ``suppress`` ids get -inf (as transformers' min_new_tokens does to EOS)."""
    seq, attn, pix = batch["input_ids"], batch["attention_mask"], batch["pixel_values"]
    out = []
    with torch.no_grad():
        for _ in range(n_new):
            logits = lvlm(input_ids=seq, pixel_values=pix, attention_mask=attn).logits[:, -1].float()
            logits[:, list(suppress)] = -math.inf
            nxt = logits.argmax(-1)
            out.append(int(nxt[0]))
            seq = torch.cat([seq, nxt[:, None]], 1)
            attn = torch.cat([attn, attn.new_ones((attn.shape[0], 1))], 1)
    return out


def bench_generate(rep: Report, quick: bool, repeats: int) -> None:
    img, n_new = (32, 8) if quick else (96, 128)
    text = [] if quick else ["model.lvlm.text.hidden_size=256", "model.lvlm.text.intermediate_size=512",
                             "model.lvlm.text.num_hidden_layers=4"]
    _, model, proc = build(["model=tiny", "model.lora.enabled=false", f"model.lvlm.vision.image_size={img}",
                            "model.lvlm.vision.patch_size=4", "model.lvlm.text.max_position_embeddings=2048", *text])
    model.eval()
    n_img = proc.n_image_tokens
    batch = _prompt_batch(model, proc)
    tok = proc.tokenizer
    eos, pad = tok.eos_token_id, tok.pad_token_id
    prompt_len = batch["input_ids"].shape[1]
    t_cfg = model.lvlm.config.get_text_config()
    rep.say(f"generate: LLaVA text hidden {t_cfg.hidden_size} x {t_cfg.num_hidden_layers} layers, {n_img} image "
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
            raise AssertionError(f"generate: KV-cached and no-cache tokens differ from position {first}: "
                                 f"{ours[first:first + 5]} vs {base[first:first + 5]}")
        if len(ours) != n_new:
            raise AssertionError(f"generate: {len(ours)} tokens instead of {n_new}")
    mo, mb = median(t_ours), median(t_base)
    rows = [("KV cache (Sim4Seg.generate)", n_new, mo, n_new / mo), ("no cache (LISA loop)", n_new, mb, n_new / mb)]
    rep.table(("implementation", "tokens", "s (median)", "tokens/s"), rows)
    for (name, n, s, tps), runs in zip(rows, (t_ours, t_base)):
        rep.emit(impl=name, tokens=n, seconds=s, tokens_per_s=tps, runs=runs)
    speedup = mb / mo
    rep.say(f"speedup {speedup:.1f}x; identical tokens asserted ({n_new} tokens x {repeats} runs)")
    rep.target("speedup>=10", speedup >= 10, f"KV-cached generation {speedup:.1f}x faster than the no-cache loop "
               f"(target >= 10x; {n_new / mo:.1f} vs {n_new / mb:.1f} tokens/s)")
    rep.headline("speedup", speedup, tokens_per_s_cached=n_new / mo, tokens_per_s_no_cache=n_new / mb,
                 new_tokens=n_new, image_tokens=n_img, prompt_tokens=prompt_len, identical_tokens=True, quick=quick)


# ----------------------------------------------------------------------------------------------------------
# 2. tts: m paths x n perturbations vs one pass and 16 passes
# ----------------------------------------------------------------------------------------------------------


class _ForceSegFixedLength:
    """A random model rarely says [SEG]: step 0 says it; afterwards [SEG] and EOS are suppressed, so every path
    has exactly one mask and max_new_tokens tokens (the same work in every run)."""

    def __init__(self, seg_id: int, eos_id: int | None, prompt_len: int):
        self.seg_id, self.eos_id, self.prompt_len = seg_id, eos_id, prompt_len

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        if input_ids.shape[1] == self.prompt_len:
            forced = torch.full_like(scores, -math.inf)
            forced[:, self.seg_id] = 0
            return forced
        scores = scores.clone()
        scores[:, [i for i in (self.seg_id, self.eos_id) if i is not None]] = -math.inf
        return scores


@contextlib.contextmanager
def forced_generation(sample: bool = False) -> Iterator[None]:
    """Patch Sim4Seg.generate (as tests/test_eval.py does) with :class:`_ForceSegFixedLength`; ``sample``
    also turns sampling on (independent passes draw their own path)."""
    from transformers import LogitsProcessorList

    from sim4seg.model.sim4seg import Sim4Seg

    original = Sim4Seg.generate

    def generate(self, batch, *a, **kw):
        proc = _ForceSegFixedLength(self.seg_token_id, kw.get("eos_token_id"), batch["input_ids"].shape[1])
        if sample:
            kw["do_sample"] = True
        kw["logits_processor"] = LogitsProcessorList([proc, *(kw.get("logits_processor") or [])])
        return original(self, batch, *a, **kw)

    Sim4Seg.generate = generate
    try:
        yield
    finally:
        Sim4Seg.generate = original


def bench_tts(rep: Report, quick: bool, repeats: int) -> None:
    from sim4seg.data.dataset import M3DSDataset, collate
    from sim4seg.evaluation.rows import generate_rows

    m, n, n_indep = 4, 4, 16
    max_new = 8 if quick else 64
    preset = "tiny" if quick else "demo"
    _, model, proc = build([f"model={preset}"])
    model.eval()
    with tempfile.TemporaryDirectory() as tmp:
        root = write_dataset(Path(tmp) / "data", 3)
        ds = M3DSDataset(root, "train", proc, "cot", with_answer=False)
        batch0 = collate(proc, [ds[0]], left_pad=True)
    cfgs = {k: compose_cfg("eval", [f"tts.m={mm}", f"tts.n={nn}", f"max_new_tokens={max_new}"])
            for k, (mm, nn) in {"plain": (1, 1), "tts": (m, n)}.items()}
    rep.say(f"tts: {preset} preset, 1 image {batch0['orig_hw'][0]}, {max_new} new tokens per path ([SEG] forced at "
            f"step 0, EOS suppressed), m={m} x n={n} vs 1 pass and {n_indep} passes, "
            f"{torch.get_num_threads()} thread(s), {repeats} repeat(s)")

    def one(cfg, sample: bool = False) -> list[dict]:
        """What eval does per batch: SAM embeddings once, then generate_rows (generation, perturbed decoding,
        selection and scoring)."""
        b = dict(batch0)
        b["sam_embeddings"] = model.encode_images(b.pop("sam_images"))
        with forced_generation(sample):
            rows, _ = generate_rows(model, proc, b, cfg, ds.vocab, "cot")
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
        for _ in range(n_indep):
            t_pass.append(timed(lambda: one(cfgs["plain"], sample=True))[0])
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


# ----------------------------------------------------------------------------------------------------------
# 3. train_step: component breakdown, with and without the SAM-embedding cache
# ----------------------------------------------------------------------------------------------------------


class Timer:
    """Exclusive wall time per name: time inside a nested span is charged to the inner name only."""

    def __init__(self) -> None:
        self.totals: dict[str, float] = defaultdict(float)
        self._stack: list[list] = []  # [name, start, time in children]

    def reset(self) -> None:
        self.totals.clear()
        self._stack.clear()

    def enter(self, name: str) -> None:
        self._stack.append([name, time.perf_counter(), 0.0])

    def exit(self) -> None:
        name, start, child = self._stack.pop()
        elapsed = time.perf_counter() - start
        self.totals[name] += elapsed - child
        if self._stack:
            self._stack[-1][2] += elapsed

    def switch(self, name: str) -> None:
        """Close the innermost span and open ``name`` at the same level."""
        self.exit()
        self.enter(name)

    @contextlib.contextmanager
    def span(self, name: str) -> Iterator[None]:
        self.enter(name)
        try:
            yield
        finally:
            self.exit()


DATA, TO_DEV, ENC, CACHE = "data wait (DataLoader)", "batch to device/dtype", "SAM image encoder", "SAM embedding cache read"
VISION, LM = "LVLM fwd: vision tower + projector", "LVLM fwd: language model + CE loss"
RVLS2M, DEC = "RVLS2M (Alg. 1 + mask prompt)", "SAM prompt encoder + mask decoder"
GLUE, LOSS = "forward glue (phi on [SEG], indexing)", "mask losses (BCE + Dice)"
BWD_HEAD, BWD_LM = "backward: losses, SAM decoder, phi, lm_head", "backward: language model (+ projector)"
OPT, OTHER, TOTAL = "optimizer (clip + AdamW)", "unattributed", "step total"
COMPONENTS = (DATA, TO_DEV, ENC, CACHE, VISION, LM, RVLS2M, DEC, GLUE, LOSS, BWD_HEAD, BWD_LM, OPT, OTHER)


class TrainHarness:
    """One training step as sim4seg.train runs it (model(batch) -> total loss -> backward -> clipped AdamW step),
    with every component timed by wrappers and hooks on this model instance (sim4seg/model is not modified).

    The optimizer is a plain torch AdamW with the run's settings: DeepSpeed's engine on one CPU process adds only
    its bookkeeping around the same backward and step. Encoder outputs of uncached steps are written to the
    embedding cache (outside the timing), so a later cached step over the same images only reads."""

    def __init__(self, model, cfg, cache_dir: Path):
        import sim4seg.model.rvls2m as rvls2m_mod
        import sim4seg.model.sim4seg as sim4seg_mod
        from sim4seg.model.embedding_cache import EmbeddingCache
        from sim4seg.training.optim import build_optimizer

        self.model = model.train()
        t = cfg.train
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.opt = build_optimizer(self.params, t, torch.device("cpu"))
        self.clip = t.grad_clip
        self.cache = EmbeddingCache(cache_dir, model.sam.image_encoder)
        self.timer = Timer()
        self._stash: list[tuple[torch.Tensor, torch.Tensor]] = []
        self._undo: list[Callable[[], None]] = []
        tm = self.timer

        def wrap(obj, attr: str, name: str, after: Callable | None = None) -> None:
            original = getattr(obj, attr)
            had = attr in vars(obj)

            @functools.wraps(original)
            def timed_call(*a, **kw):
                with tm.span(name):
                    out = original(*a, **kw)
                if after is not None:
                    after(a, kw, out)
                return out

            setattr(obj, attr, timed_call)
            self._undo.append((lambda: setattr(obj, attr, original)) if had else (lambda: delattr(obj, attr)))

        def hook_hidden(a, kw, out) -> None:
            h = out.hidden_states[-1] if out.hidden_states is not None else None
            if h is not None and h.requires_grad:
                h.register_hook(lambda g: tm.switch(BWD_LM))

        def stash(a, kw, out) -> None:
            self._stash.append((a[0].detach(), out.detach()))

        wrap(model.lvlm, "forward", LM, hook_hidden)
        wrap(model, "encode_images", ENC, stash)
        wrap(model, "region_cells", RVLS2M)
        wrap(model, "decode", DEC)
        wrap(rvls2m_mod, "to_mask_prompt", RVLS2M)
        wrap(sim4seg_mod, "mask_losses", LOSS)
        wrap(sim4seg_mod, "total_loss", LOSS)
        base = model.lvlm.get_base_model() if hasattr(model.lvlm, "get_base_model") else model.lvlm
        for mod in (base.model.vision_tower, base.model.multi_modal_projector):
            pre = mod.register_forward_pre_hook(lambda m, a: tm.enter(VISION))
            post = mod.register_forward_hook(lambda m, a, o: tm.exit())
            self._undo += [pre.remove, post.remove]

    def close(self) -> None:
        for undo in reversed(self._undo):
            undo()
        self._undo.clear()

    def step(self, next_batch: Callable[[], dict], use_cache: bool) -> dict[str, float]:
        from sim4seg.training.batches import to_device

        tm, model = self.timer, self.model
        tm.reset()
        self._stash.clear()
        start = time.perf_counter()
        with tm.span(DATA):
            batch = next_batch()
        with tm.span(TO_DEV):
            batch = to_device(batch, torch.device("cpu"), torch.float32)
        if use_cache:
            with tm.span(CACHE):
                batch["sam_embeddings"] = self.cache(batch.pop("sam_images"))
        with tm.span(GLUE):
            losses = model(batch).losses
        with tm.span(BWD_HEAD):
            losses["total"].backward()
        with tm.span(OPT):
            torch.nn.utils.clip_grad_norm_(self.params, self.clip)
            self.opt.step()
            self.opt.zero_grad(set_to_none=True)
        total = time.perf_counter() - start
        out = {c: tm.totals.get(c, 0.0) for c in COMPONENTS}
        out[OTHER] = total - sum(tm.totals.values())
        out[TOTAL] = total
        out["samples"] = len(batch["ids"])
        for images, emb in self._stash:  # fill the cache (not timed)
            for x, e in zip(images, emb):
                self.cache._write(self.cache.key(x), e)
        return out


def _loader(ds, proc, micro_batch: int, seed: int, workers: int = 0):
    from torch.utils.data import DataLoader

    from sim4seg.data.dataset import ResumableSampler, collate

    sampler = ResumableSampler([r.subset for r in ds.records], seed)
    return DataLoader(ds, sampler=sampler, batch_size=micro_batch, num_workers=workers,
                      collate_fn=functools.partial(collate, proc), generator=torch.Generator().manual_seed(seed))


def _train_setup(quick: bool, extra: Sequence[str] = ()):
    overrides = ["experiment=smoke"] if quick else ["experiment=demo"]
    return build([*overrides, "wandb.mode=disabled", *extra])


def _breakdown(runs: list[dict[str, float]]) -> dict[str, float]:
    """Median of each component and of the step total over measured steps."""
    return {k: median([r[k] for r in runs]) for k in (*COMPONENTS, TOTAL)}


def bench_train_step(rep: Report, quick: bool, repeats: int) -> None:
    from sim4seg.data.dataset import M3DSDataset

    steps = max(2, repeats)
    cfg, model, proc = _train_setup(quick)
    mb = cfg.train.micro_batch
    with tempfile.TemporaryDirectory() as tmp:
        root = write_dataset(Path(tmp) / "data", mb * (steps + 1))
        ds = M3DSDataset(root, "train", proc, cfg.data.answer_format, with_answer=True)
        harness = TrainHarness(model, cfg, Path(tmp) / "cache")
        rep.say(f"train_step: {cfg.model.name} preset, micro-batch {mb}, {cfg.data.answer_format} answers, "
                f"{len(ds)} synthetic images, DataLoader workers {cfg.data.num_workers}, "
                f"{torch.get_num_threads()} thread(s), 1 warm-up + {steps} measured steps per mode (interleaved)")
        # Two loaders with the same seed yield the same batches: step i without cache, then step i with it.
        it_plain = iter(_loader(ds, proc, mb, cfg.train.seed, cfg.data.num_workers))
        it_cache = iter(_loader(ds, proc, mb, cfg.train.seed, cfg.data.num_workers))
        runs: dict[bool, list] = {False: [], True: []}
        try:
            for i in range(steps + 1):
                for use_cache, it in ((False, it_plain), (True, it_cache)):
                    r = harness.step(lambda it=it: next(it), use_cache)
                    if i:
                        runs[use_cache].append(r)
        finally:
            harness.close()
    med = {k: _breakdown(v) for k, v in runs.items()}
    rows = []
    for c in (*COMPONENTS, TOTAL):
        a, b = med[False][c], med[True][c]
        rows.append((c, 1e3 * a, 100 * a / med[False][TOTAL], 1e3 * b, 100 * b / med[True][TOTAL]))
    rep.table(("component", "ms (no cache)", "%", "ms (cache)", "%"), rows)
    for c, a, pa, b, pb in rows:
        rep.emit(component=c, ms_no_cache=a, pct_no_cache=pa, ms_cache=b, pct_cache=pb)
    sps = {k: mb / med[k][TOTAL] for k in (False, True)}
    rep.say(f"samples/s: {sps[False]:.3f} without cache, {sps[True]:.3f} with cache "
            f"({sps[True] / sps[False]:.2f}x)")
    rv = {k: 100 * med[k][RVLS2M] / med[k][TOTAL] for k in (False, True)}
    rep.target("rvls2m<2%", max(rv.values()) < 2, f"RVLS2M takes {rv[True]:.2f}% of a cached step and "
               f"{rv[False]:.2f}% of an uncached step ({1e3 * med[True][RVLS2M]:.2f} ms; target < 2%)")
    enc_share = 100 * med[False][ENC] / med[False][TOTAL]
    removed = med[True][ENC] == 0 and med[True][CACHE] < 0.1 * med[False][ENC]
    rep.target("cache_removes_encoder", removed, f"the encoder's {enc_share:.1f}% share "
               f"({1e3 * med[False][ENC]:.0f} ms) becomes a {1e3 * med[True][CACHE]:.1f} ms cache read "
               f"({100 * med[True][CACHE] / med[True][TOTAL]:.1f}% of a cached step)")
    rep.headline("cache_speedup", sps[True] / sps[False], samples_per_s_no_cache=sps[False],
                 samples_per_s_cache=sps[True], rvls2m_pct_cache=rv[True], rvls2m_pct_no_cache=rv[False],
                 encoder_pct_no_cache=enc_share, step_ms_no_cache=1e3 * med[False][TOTAL],
                 step_ms_cache=1e3 * med[True][TOTAL], preset=cfg.model.name, micro_batch=mb, quick=quick)


# ----------------------------------------------------------------------------------------------------------
# 4. loader: data pipeline throughput vs the model's consumption
# ----------------------------------------------------------------------------------------------------------


def _loader_stages(ds, proc, n: int) -> dict[str, float]:
    """Seconds per image of each stage, run in this process (where the time of a worker goes)."""
    from sim4seg.data.dataset import collate
    from sim4seg.data.io import load_image, load_mask
    from sim4seg.data.prompts import answer_for

    tm = Timer()
    samples = []
    for rec in ds.records[:n]:
        with tm.span("decode image"):
            image = load_image(ds.root / rec.image, ds.max_pixels)
        with tm.span("decode + check mask"):
            mask = load_mask(ds.root / rec.mask, image.shape[:2], ds.max_pixels)
        with tm.span("CLIP transform"):
            proc.clip(image)
        with tm.span("SAM transform"):
            proc.sam(image)
        with tm.span("tokens + mask tensor (Processor.sample rest)"):
            proc.tokens(rec.query, answer_for(ds.answer_format, rec.id, rec.diagnosis, rec.cot))
            torch.from_numpy(mask).float()[None]
        samples.append(ds[ds.records.index(rec)])
    with tm.span("collate"):
        collate(proc, samples)
    return {k: v / n for k, v in tm.totals.items()}


def _loader_rate(ds, proc, mb: int, workers: int) -> tuple[float, float]:
    """(images/s from iterator creation, steady-state images/s after the first batch) over one pass."""
    loader = _loader(ds, proc, mb, 0, workers)
    n, first = 0, None
    start = time.perf_counter()
    for batch in loader:
        if first is None:
            first, n0 = time.perf_counter(), len(batch["ids"])
        n += len(batch["ids"])
    end = time.perf_counter()
    return n / (end - start), (n - n0) / (end - first)


def bench_loader(rep: Report, quick: bool, repeats: int) -> None:
    from sim4seg.data.dataset import M3DSDataset

    cfg, model, proc = _train_setup(quick)
    mb = cfg.train.micro_batch
    sizes = [(1024, 1280), (1536, 1536)]
    n_img = 2 * mb if quick else 8 * mb
    with tempfile.TemporaryDirectory() as tmp:
        root = write_dataset(Path(tmp) / "data", n_img, sizes, exts=(".jpg", ".png"))
        ds = M3DSDataset(root, "train", proc, cfg.data.answer_format, with_answer=True)
        rep.say(f"loader: {n_img} images of 1024x1280 (JPEG) and 1536x1536 (PNG), {cfg.model.name} preset "
                f"processor (CLIP {proc.image_processor.crop_size['height']} px, SAM {proc.sam_size} px), micro-batch "
                f"{mb}, {repeats} repeat(s); consumption = cached training steps on the same images")
        stages = _loader_stages(ds, proc, min(len(ds), 4))
        rates: dict[int, list] = {1: [], 2: []}
        for _ in range(repeats):
            for w in rates:
                rates[w].append(_loader_rate(ds, proc, mb, w))
        # Consumption: cached training steps over the first micro-batch (encoded once to fill the cache).
        harness = TrainHarness(model, cfg, Path(tmp) / "cache")
        first = next(iter(_loader(ds, proc, mb, 0)))
        try:
            harness.step(lambda: _copy_batch(first), use_cache=False)
            cons = [harness.step(lambda: _copy_batch(first), use_cache=True) for _ in range(max(2, repeats) + 1)][1:]
        finally:
            harness.close()
    step_s = median([r[TOTAL] - r[DATA] for r in cons])
    consumption = mb / step_s
    rep.table(("stage (1 process)", "ms / image"), [(k, 1e3 * v) for k, v in stages.items()])
    for k, v in stages.items():
        rep.emit(stage=k, ms_per_image=1e3 * v)
    rep.say()
    rows = []
    for w, rs in rates.items():
        total, steady = median([r[0] for r in rs]), median([r[1] for r in rs])
        rows.append((f"DataLoader, {w} worker(s)", total, steady, total / consumption))
        rep.emit(workers=w, images_per_s=total, images_per_s_steady=steady, ratio_to_consumption=total / consumption)
    rows.append(("model consumption (cached step)", consumption, consumption, 1.0))
    rep.emit(consumer="cached training step", samples_per_s=consumption, step_ms=1e3 * step_s)
    rep.table(("pipeline", "images/s (whole pass)", "images/s (after 1st batch)", "x consumption"), rows)
    ratio = {w: r[3] for w, r in zip(rates, rows)}
    rep.target("loader>=consumption", ratio[2] >= 1, f"with 2 workers the loader delivers {ratio[2]:.2f}x what a "
               f"cached step consumes (1 worker: {ratio[1]:.2f}x; {consumption:.2f} samples/s consumed)")
    rep.headline("loader_over_consumption", ratio[2], ratio_1_worker=ratio[1], ratio_2_workers=ratio[2],
                 consumption_samples_per_s=consumption, images_per_s_1_worker=rows[0][1],
                 images_per_s_2_workers=rows[1][1], preset=cfg.model.name, quick=quick)


def _copy_batch(batch: dict) -> dict:
    return {k: (v.clone() if isinstance(v, torch.Tensor) else list(v) if isinstance(v, list) else v)
            for k, v in batch.items()}


# ----------------------------------------------------------------------------------------------------------
# 5. metrics: gIoU/cIoU counting
# ----------------------------------------------------------------------------------------------------------


def random_blobs(rng: np.random.Generator, n: int, size: int) -> list[np.ndarray]:
    """``n`` bool masks, each 0-3 random filled ellipses (some empty)."""
    import cv2

    out = []
    for _ in range(n):
        m = np.zeros((size, size), np.uint8)
        for _ in range(int(rng.integers(0, 4))):
            c = tuple(int(x) for x in rng.integers(0, size, 2))
            axes = tuple(int(x) for x in rng.integers(size // 50 + 1, size // 5 + 2, 2))
            cv2.ellipse(m, c, axes, float(rng.uniform(0, 180)), 0, 360, 1, -1)
        out.append(m.view(bool))
    return out


def loop_counts(preds: Sequence[np.ndarray], gts: Sequence[np.ndarray]) -> tuple[list[int], list[int], list[float]]:
    """The straightforward baseline: per mask np.logical_and/np.logical_or ``.sum()`` and a float division."""
    inter, union, iou = [], [], []
    for p, g in zip(preds, gts):
        i, u = int(np.logical_and(p, g).sum()), int(np.logical_or(p, g).sum())
        inter.append(i)
        union.append(u)
        iou.append(i / u if u else 1.0)
    return inter, union, iou


def _time_metrics_chunk(preds: list[np.ndarray], gts: list[np.ndarray], repeats: int):
    """Median seconds of (ours, loop) on one chunk, interleaved, and the first run's results (after checking that
    both give the same per-mask counts)."""
    from sim4seg.metrics import SegmentationMeter, segmentation_counts

    per: list[list[float]] = [[], []]
    first = None
    for _ in range(repeats):
        m = SegmentationMeter()
        per[0].append(timed(lambda m=m: m.add_masks_batch(preds, gts))[0])
        dt, res = timed(lambda: loop_counts(preds, gts))
        per[1].append(dt)
        if first is None:
            first = (m, res)
            oi, ou = segmentation_counts(preds, gts)
            if not (np.array_equal(oi, res[0]) and np.array_equal(ou, res[1])):
                raise AssertionError("metrics: per-mask counts differ between implementations")
    return [median(x) for x in per], first


def bench_metrics(rep: Report, quick: bool, repeats: int) -> None:
    from sim4seg.metrics import SegmentationMeter

    n_masks, size, chunk = (16, 256, 8) if quick else (1000, 1024, 100)
    rng = np.random.default_rng(0)
    impls = ("ours (SegmentationMeter.add_masks_batch)", "numpy loop (baseline)")
    t = {k: [] for k in impls}
    meter = SegmentationMeter()
    base_i, base_u, base_iou = [], [], []
    rep.say(f"metrics: {n_masks} bool mask pairs of {size}x{size} (random ellipses), chunks of {chunk} generated "
            f"between timings, {repeats} repeat(s) per chunk, interleaved")
    for start in range(0, n_masks, chunk):
        k = min(chunk, n_masks - start)
        per, (m, res) = _time_metrics_chunk(random_blobs(rng, k, size), random_blobs(rng, k, size), repeats)
        for name, dt in zip(impls, per):
            t[name].append(dt)
        meter.merge(m)
        base_i += res[0]
        base_u += res[1]
        base_iou += res[2]
    ours = meter.result()
    base = {"gIoU": float(np.mean(np.array(base_iou))), "cIoU": sum(base_i) / sum(base_u) if sum(base_u) else 1.0}
    if ours["gIoU"] != base["gIoU"] or ours["cIoU"] != base["cIoU"]:
        raise AssertionError(f"metrics: results differ: ours {ours} vs loop {base}")
    rate = {k: n_masks / sum(v) for k, v in t.items()}
    rows = [(k, rate[k], rate[k] / rate[impls[1]]) for k in impls]
    rep.table(("implementation", "masks/s", "x loop"), rows)
    for k, r, x in rows:
        rep.emit(impl=k, masks_per_s=r, over_loop=x)
    rep.say(f"gIoU {ours['gIoU']:.6f}, cIoU {ours['cIoU']:.6f}: identical in both (and identical per-mask counts)")
    ratio = rate[impls[0]] / rate[impls[1]]
    rep.target("ours>=loop", ratio >= 1, f"sim4seg.metrics counts {rate[impls[0]]:.0f} masks/s vs the loop's "
               f"{rate[impls[1]]:.0f} ({ratio:.2f}x)")
    rep.headline("speedup_vs_loop", ratio, masks_per_s_ours=rate[impls[0]], masks_per_s_loop=rate[impls[1]],
                 gIoU=ours["gIoU"], cIoU=ours["cIoU"], identical=True,
                 masks=n_masks, size=size, quick=quick)


# ----------------------------------------------------------------------------------------------------------
# Entry point
# ----------------------------------------------------------------------------------------------------------

RUNNERS: dict[str, Callable[[Report, bool, int], None]] = {
    "generate": bench_generate, "tts": bench_tts, "train_step": bench_train_step, "loader": bench_loader,
    "metrics": bench_metrics,
}


def main(argv: Sequence[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(prog="python -m sim4seg.bench", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("name", choices=[*BENCHMARKS, "all"])
    ap.add_argument("--json", action="store_true", help="JSON lines on stdout (table on stderr)")
    ap.add_argument("--quick", action="store_true", help="tiny sizes (tests)")
    ap.add_argument("--repeats", type=int, default=None, help="timed repeats (default 3, 1 with --quick)")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch intra-op threads (default 1: stable timings on shared CPUs)")
    args = ap.parse_args(argv)
    repeats = args.repeats or (1 if args.quick else 3)
    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    records: list[dict] = []
    try:
        for name in BENCHMARKS if args.name == "all" else (args.name,):
            torch.manual_seed(0)
            rep = Report(name, args.json)
            RUNNERS[name](rep, args.quick, repeats)
            records += rep.records
            rep.say()
    finally:
        torch.set_num_threads(threads)
    return records


if __name__ == "__main__":
    main()
