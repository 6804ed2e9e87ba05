"""Training: run directory, optimizer and DeepSpeed engine, batches, loop. ``sim4seg/train.py`` launches it;
the benchmarks and the GPU check build their steps from the same pieces."""

from sim4seg.training.loop import train

__all__ = ["train"]
