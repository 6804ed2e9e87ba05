"""Evaluation: rows per sample (rows.py), test-time scaling candidates and selection (tts.py), reports
(report.py, figures.py), the resume fingerprint (fingerprint.py), trivial baselines (baselines.py) and the run
that ties them together (run.py). ``python -m sim4seg.eval`` is its launcher; nothing here imports it."""

from sim4seg.evaluation.run import evaluate

__all__ = ["evaluate"]
