"""Soak run: train the tiny preset for a long time with periodic evaluation and check that memory does not grow
and no file handle leaks. Samples the training process's RSS and open file descriptors from /proc.

    python scripts/soak.py --steps 2000 --eval-every 100 --out runs/soak

Prints a table of samples and a verdict: RSS growth over the second half of the run (after warm-up) and the
change in open file descriptors. Exit code 1 when growth exceeds --max-growth-mb or descriptors grow.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def proc_stats(pid: int) -> tuple[float, int]:
    rss_kb = next(int(x.split()[1]) for x in Path(f"/proc/{pid}/status").read_text().splitlines()
                  if x.startswith("VmRSS"))
    return rss_kb / 1024, len(list(Path(f"/proc/{pid}/fd").iterdir()))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--eval-every", type=int, default=100)
    ap.add_argument("--out", default=None)
    ap.add_argument("--interval", type=float, default=5.0)
    ap.add_argument("--max-growth-mb", type=float, default=50.0)
    args = ap.parse_args()
    from sim4seg.data.synthetic import write_synthetic

    work = Path(args.out or tempfile.mkdtemp(prefix="soak"))
    data = work / "data"
    if not (data / "records.jsonl").exists():
        write_synthetic(data, n=120, seed=0, progress=False)
    run = work / "run"
    cmd = [sys.executable, "-m", "sim4seg.train", "model=tiny", f"data.root={data}", f"train.output_dir={run}",
           f"train.max_steps={args.steps}", "train.epochs=100000", "train.micro_batch=2", "train.grad_accum=1",
           f"train.eval_every={args.eval_every}", "train.eval_max_samples=12", f"train.save_every={args.steps // 4}",
           "train.progress=false", "wandb.mode=disabled", "data.answer_format=cot"]
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    samples = []
    start = time.time()
    while p.poll() is None:
        try:
            rss, fds = proc_stats(p.pid)
        except (FileNotFoundError, ProcessLookupError, StopIteration):
            break
        log = run / "metrics.jsonl"
        step = 0
        if log.exists():
            lines = [json.loads(x) for x in log.read_text().splitlines() if x]
            step = max((x["step"] for x in lines), default=0)
        samples.append((time.time() - start, step, rss, fds))
        time.sleep(args.interval)
    if p.wait() != 0 or len(samples) < 4:
        print(f"training failed or too short (exit {p.returncode}, {len(samples)} samples)")
        return 1
    print(f"{'time s':>8} {'step':>6} {'RSS MB':>8} {'fds':>5}")
    for t, step, rss, fds in samples[:: max(1, len(samples) // 20)]:
        print(f"{t:8.0f} {step:6d} {rss:8.1f} {fds:5d}")
    half = [s for s in samples if s[1] >= args.steps // 2] or samples[len(samples) // 2:]
    growth = max(s[2] for s in half) - half[0][2]
    fd_growth = half[-1][3] - half[0][3]
    ok = growth <= args.max_growth_mb and fd_growth <= 0
    print(f"second half: RSS {half[0][2]:.1f} -> max {max(s[2] for s in half):.1f} MB (growth {growth:.1f} MB), "
          f"open fds {half[0][3]} -> {half[-1][3]}; {'OK' if ok else 'LEAK SUSPECTED'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
