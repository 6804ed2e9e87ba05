"""``sim4seg data convert|check|stats``: argparse wiring; ``sim4seg.cli`` calls :func:`register`.

Heavy imports (OpenCV, pycocotools) happen inside the commands so that building the CLI parser stays fast.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from sim4seg.data.io import DEFAULT_MAX_PIXELS
from sim4seg.errors import UserError

# Kept here (not imported from the converters) so `sim4seg --help` does not load OpenCV; a test checks they agree.
SOURCES = ("fracatlas", "bone_fracture", "bfd", "isbi", "isic", "kvasir", "busi", "tn3k", "chestx_det", "fives")


def register(data_subparsers: argparse._SubParsersAction) -> None:
    """Add ``convert``, ``check`` and ``stats`` to the ``sim4seg data`` sub-parsers."""
    p = data_subparsers.add_parser(
        "convert", help="convert one source dataset from its native layout into an M3DS folder (appends)",
        description="Convert one source from the layout it ships in and append it to --out; run once per source "
                    "into the same folder to build M3DS. Ids already in --out are skipped, so re-running resumes. "
                    "See data/README.md for each source's download and layout.")
    p.add_argument("--source", required=True, metavar="NAME", help=f"one of: {', '.join(SOURCES)}")
    p.add_argument("--root", required=True, type=Path, help="the unpacked official download")
    p.add_argument("--out", required=True, type=Path, help="the M3DS dataset folder to append to")
    p.add_argument("--seed", type=int, default=0, help="seed of the seeded splits (default 0)")
    p.add_argument("--strict", action="store_true",
                   help="stop at the first damaged file (default: skip it with a warning and count it)")
    p.add_argument("--include-normal", action="store_true",
                   help="busi: keep the 'normal' class (empty masks), left out by default as in the paper")
    p.set_defaults(func=cmd_convert)

    p = data_subparsers.add_parser("check", help="validate a dataset folder: records, files, masks, labels",
                                   description="Check every record and file; one line per problem; exit code 1 "
                                               "when there are problems.")
    p.add_argument("dir", type=Path, metavar="DIR")
    p.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS,
                   help=f"refuse images larger than this (default {DEFAULT_MAX_PIXELS})")
    p.set_defaults(func=cmd_check)

    p = data_subparsers.add_parser("stats", help="print the split sizes as the paper's Table 1")
    p.add_argument("dir", type=Path, metavar="DIR")
    p.set_defaults(func=cmd_stats)


def cmd_convert(args: argparse.Namespace) -> int:
    from sim4seg.data.converters import CONVERTERS, ConvertOptions

    if args.source not in CONVERTERS:
        raise UserError(f"unknown --source {args.source!r}; one of: {', '.join(CONVERTERS)}")
    opts = ConvertOptions(seed=args.seed, strict=args.strict, include_normal=args.include_normal)
    summary = CONVERTERS[args.source](args.root, args.out, opts)
    print(summary.line())
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    from sim4seg.data.check import check_dataset, print_report

    if args.max_pixels <= 0:
        raise UserError(f"--max-pixels must be positive, got {args.max_pixels}")
    report = check_dataset(args.dir, args.max_pixels)
    print_report(report)
    return 0 if report.ok else 1


def cmd_stats(args: argparse.Namespace) -> int:
    from sim4seg.data.check import dataset_stats, format_stats

    print(format_stats(dataset_stats(args.dir)))
    return 0
