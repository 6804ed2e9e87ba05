"""``loader``: DataLoader throughput on 1024+ px images (1 and 2 workers), stage by stage in one process, against
the model's consumption rate (cached training steps on the same images)."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import torch

from sim4seg.bench.common import Report, median, write_dataset
from sim4seg.bench.train_step import DATA, TOTAL, Timer, TrainHarness, loader, train_setup


def _loader_stages(ds, proc, n: int) -> dict[str, float]:
    """Seconds per image of each stage, run in this process (where the time of a worker goes)."""
    from sim4seg.data.dataset import collate
    from sim4seg.data.io import load_image, load_mask
    from sim4seg.data.prompts import record_answer

    tm = Timer()
    samples = []
    for rec in ds.records[:n]:
        with tm.span("decode image"):
            image = load_image(ds.root / rec.image, ds.max_pixels)
        with tm.span("decode + check mask"):
            mask = load_mask(ds.root / rec.mask, image.shape[:2], ds.max_pixels)
        with tm.span("LVLM view (CLIP transform)"):
            proc.vision(image)
        with tm.span("SAM transform"):
            proc.sam(image)
        with tm.span("tokens + mask tensor (Processor.sample rest)"):
            proc.tokens(rec.query, record_answer(ds.answer_format, rec))
            torch.from_numpy(mask).float()[None]
        samples.append(ds[ds.records.index(rec)])
    with tm.span("collate"):
        collate(proc, samples)
    return {k: v / n for k, v in tm.totals.items()}


def _loader_rate(ds, proc, mb: int, workers: int) -> tuple[float, float]:
    """(images/s from iterator creation, steady-state images/s after the first batch) over one pass."""
    batches = loader(ds, proc, mb, 0, workers)
    n, first = 0, None
    start = time.perf_counter()
    for batch in batches:
        if first is None:
            first, n0 = time.perf_counter(), len(batch["ids"])
        n += len(batch["ids"])
    end = time.perf_counter()
    return n / (end - start), (n - n0) / (end - first)


def run(rep: Report, quick: bool, repeats: int) -> None:
    from sim4seg.data.dataset import M3DSDataset

    cfg, model, proc = train_setup(quick)
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
        first = next(iter(loader(ds, proc, mb, 0)))
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
