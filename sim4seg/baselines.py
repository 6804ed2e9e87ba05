"""``python -m sim4seg.baselines --data DIR --split test --results EVAL_OUT``: trivial baselines beside an
evaluation (launcher of :mod:`sim4seg.evaluation.baselines`)."""

import sys

from sim4seg.evaluation.baselines import main

if __name__ == "__main__":
    sys.exit(main())
