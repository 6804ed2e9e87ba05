"""``train_step``: one training step broken down by component (exclusive wall time per span), with and without
the SAM-embedding cache; the steps interleave over the same batches."""

from __future__ import annotations

import contextlib
import functools
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import torch

from sim4seg.bench.common import Report, build, median, write_dataset


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
VISION_MODULES = {"llava": ("vision_tower", "multi_modal_projector"), "qwen2_5_vl": ("visual",)}  # timed as VISION


def families(quick: bool) -> dict[str, list[str]]:
    """Per LVLM family, the overrides on the run's experiment: Qwen's tiny preset with the same SAM."""
    return {"llava": [], "qwen2_5_vl": ["model=tiny_qwen2_5_vl", f"model.sam.kind={'tiny' if quick else 'litemedsam'}"]}


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
        vision = VISION_MODULES[cfg.model.lvlm.get("family", "llava")]
        for mod in (getattr(base.model, name) for name in vision):
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


def loader(ds, proc, micro_batch: int, seed: int, workers: int = 0):
    """The training DataLoader's shape (resumable sampler, collate); two with the same seed give the same batches."""
    from torch.utils.data import DataLoader

    from sim4seg.data.dataset import ResumableSampler, collate

    sampler = ResumableSampler([r.subset for r in ds.records], seed)
    return DataLoader(ds, sampler=sampler, batch_size=micro_batch, num_workers=workers,
                      collate_fn=functools.partial(collate, proc), generator=torch.Generator().manual_seed(seed))


def train_setup(quick: bool, extra: Sequence[str] = ()):
    """(cfg, model, processor) of the demo experiment (``smoke`` with --quick)."""
    overrides = ["experiment=smoke"] if quick else ["experiment=demo"]
    return build([*overrides, "wandb.mode=disabled", *extra])


def _breakdown(runs: list[dict[str, float]]) -> dict[str, float]:
    """Median of each component and of the step total over measured steps."""
    return {k: median([r[k] for r in runs]) for k in (*COMPONENTS, TOTAL)}


def measure(rep: Report, quick: bool, steps: int, extra: Sequence[str]) -> dict:
    """Cached vs uncached steps of one preset, interleaved over the same batches; the median breakdowns."""
    from sim4seg.data.dataset import M3DSDataset

    cfg, model, proc = train_setup(quick, extra)
    mb = cfg.train.micro_batch
    with tempfile.TemporaryDirectory() as tmp:
        root = write_dataset(Path(tmp) / "data", mb * (steps + 1))
        ds = M3DSDataset(root, "train", proc, cfg.data.answer_format, with_answer=True)
        harness = TrainHarness(model, cfg, Path(tmp) / "cache")
        rep.say(f"train_step: {cfg.model.name} preset, micro-batch {mb}, {cfg.data.answer_format} answers, "
                f"{len(ds)} synthetic images, DataLoader workers {cfg.data.num_workers}, "
                f"{torch.get_num_threads()} thread(s), 1 warm-up + {steps} measured steps per mode (interleaved)")
        # Two loaders with the same seed yield the same batches: step i without cache, then step i with it.
        it_plain = iter(loader(ds, proc, mb, cfg.train.seed, cfg.data.num_workers))
        it_cache = iter(loader(ds, proc, mb, cfg.train.seed, cfg.data.num_workers))
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
        rep.emit(component=c, preset=cfg.model.name, ms_no_cache=a, pct_no_cache=pa, ms_cache=b, pct_cache=pb)
    sps = {k: mb / med[k][TOTAL] for k in (False, True)}
    rep.say(f"{cfg.model.name}: samples/s {sps[False]:.3f} without cache, {sps[True]:.3f} with cache "
            f"({sps[True] / sps[False]:.2f}x)")
    return {"cfg": cfg, "med": med, "sps": sps, "mb": mb}


def run(rep: Report, quick: bool, repeats: int) -> None:
    steps = max(2, repeats)
    res = {family: measure(rep, quick, steps, extra) for family, extra in families(quick).items()}
    cfg, med, sps, mb = (res["llava"][k] for k in ("cfg", "med", "sps", "mb"))
    rv = {k: 100 * med[k][RVLS2M] / med[k][TOTAL] for k in (False, True)}
    rep.target("rvls2m<2%", max(rv.values()) < 2, f"RVLS2M takes {rv[True]:.2f}% of a cached step and "
               f"{rv[False]:.2f}% of an uncached step ({1e3 * med[True][RVLS2M]:.2f} ms; target < 2%)")
    enc_share = 100 * med[False][ENC] / med[False][TOTAL]
    removed = med[True][ENC] == 0 and med[True][CACHE] < 0.1 * med[False][ENC]
    rep.target("cache_removes_encoder", removed, f"the encoder's {enc_share:.1f}% share "
               f"({1e3 * med[False][ENC]:.0f} ms) becomes a {1e3 * med[True][CACHE]:.1f} ms cache read "
               f"({100 * med[True][CACHE] / med[True][TOTAL]:.1f}% of a cached step)")
    qwen = res["qwen2_5_vl"]
    rep.headline("cache_speedup", sps[True] / sps[False], samples_per_s_no_cache=sps[False],
                 samples_per_s_cache=sps[True], rvls2m_pct_cache=rv[True], rvls2m_pct_no_cache=rv[False],
                 encoder_pct_no_cache=enc_share, step_ms_no_cache=1e3 * med[False][TOTAL],
                 step_ms_cache=1e3 * med[True][TOTAL], preset=cfg.model.name, micro_batch=mb, quick=quick,
                 preset_qwen2_5_vl=qwen["cfg"].model.name, samples_per_s_cache_qwen2_5_vl=qwen["sps"][True],
                 samples_per_s_no_cache_qwen2_5_vl=qwen["sps"][False],
                 step_ms_cache_qwen2_5_vl=1e3 * qwen["med"][True][TOTAL])
