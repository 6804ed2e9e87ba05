"""Reproduce the paper's tables and figures: run what is missing, collect metrics.json files, and write
``results/<name>.md`` (ours beside the published numbers), ``results/<name>.json`` and a PNG for figures.

    python -m sim4seg.reproduce table2 --lisa-dir /models/lisa7b-converted --data /data/m3ds
    python -m sim4seg.reproduce fig6 --smoke          # same pipeline: synthetic data, tiny model, a few steps

Every row or point is a Hydra experiment in ``configs/experiment``; training runs go to ``<out>/runs/<exp>``,
evaluations to ``<out>/evals/<exp>[-variant]``. A run counts as done only when training recorded every planned
step (``finished.json``, :func:`sim4seg.model.checkpoint.require_finished`), an evaluation when its
``metrics.json`` exists; done ones are skipped, so an interrupted script continues where it stopped.

Fine-tuning runs start from LISA (``--lisa-dir``), which the zero-shot rows evaluate as it is. Smoke mode has
no LISA: it first trains a stand-in, ``smoke_lisa`` (the tiny model, 30 steps on the synthetic diagnosis
answers, until it answers "It is [SEG]. ..."), evaluates that for the zero-shot rows and starts every other
run from it, so generated answers reach [SEG] and masks are really decoded; a smoke evaluation in which no
answer has a [SEG] fails the run.
"""


