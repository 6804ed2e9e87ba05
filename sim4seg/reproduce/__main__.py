"""``python -m sim4seg.reproduce TARGET [--smoke | --data DIR --lisa-dir DIR] [--out DIR]``."""

from __future__ import annotations

import argparse
import sys

from sim4seg import deps
from sim4seg.errors import UserError
from sim4seg.reproduce import __doc__ as DOC

TARGETS = ("table2", "table3", "table4", "table5", "table6", "fig5", "fig6", "fig7")


def _run(target: str, args: argparse.Namespace) -> None:
    # Imported here, after the package check: these pull in torch and the model.
    from sim4seg.reproduce.figures import fig5, fig6, fig7
    from sim4seg.reproduce.runs import make_mode
    from sim4seg.reproduce.tables import leave_one_out, table2, table3, table4

    build = {"table2": table2, "table3": table3, "table4": table4,
             "table5": lambda m: leave_one_out(m, "table5"), "table6": lambda m: leave_one_out(m, "table6"),
             "fig5": fig5, "fig6": fig6, "fig7": fig7}[target]
    mode = make_mode(args)
    mode.out.mkdir(parents=True, exist_ok=True)
    build(mode)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=DOC, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("target", choices=TARGETS)
    ap.add_argument("--smoke", action="store_true", help="synthetic data, tiny model, a few steps per run")
    ap.add_argument("--data", help="M3DS folder (full runs)")
    ap.add_argument("--lisa-dir", help="LISA-7B converted with `sim4seg convert-lisa` (full runs)")
    ap.add_argument("--out", help="results folder (default results/, or results/smoke with --smoke)")
    args = ap.parse_args(argv)
    deps.require(deps.TRAIN, "reproduction")
    try:
        _run(args.target, args)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
