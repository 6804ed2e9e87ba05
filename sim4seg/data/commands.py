"""``sim4seg data convert|check|stats``: argparse wiring; ``sim4seg.cli`` calls :func:`register`.

Heavy imports (OpenCV, pycocotools) happen inside the commands so that building the CLI parser stays fast.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from sim4seg.data.io import DEFAULT_MAX_PIXELS
from sim4seg.errors import UserError

# Kept here (not imported from the converters) so `sim4seg --help` does not load OpenCV; a test checks they agree.
SOURCES = ("fracatlas", "bone_fracture", "bfd", "isbi", "isic", "kvasir", "busi", "tn3k", "chestx_det", "fives",
           "folder")


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
    p.add_argument("--negatives", action="store_true",
                   help="also convert the images without a finding, as negatives (\"mask\": null, diagnosis "
                        "normal; own seeded split): busi normal, fracatlas non-fractured, chestx_det No Finding, "
                        "bone_fracture/bfd images without shapes. Left out by default, as in the paper")
    p.add_argument("--per-finding-targets", action="store_true",
                   help="images with several annotated findings (busi mask files, fracatlas annotations, "
                        "chestx_det polygons, bone_fracture/bfd shapes) also get one mask per finding in "
                        "\"targets\"; \"mask\" stays their union (the paper's setting)")
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

    p = data_subparsers.add_parser(
        "cot", help="fill the records' CoT with a medical assistant + critic loop (paper Sec. 2.2)",
        description="For each record without a CoT, the assistant writes 'Firstly, ... Secondly, ... Finally, the "
                    "diagnosis is X.' from the image, question and known diagnosis; a rule gate and the critic "
                    "accept or reject it, rejections are fed back, and after --max-rounds the record is left for "
                    "human review (`sim4seg data review`). Results are saved after every batch; rerunning resumes. "
                    "SPEC: hf:/path/to/local/model-dir (LLaVA or Qwen2.5-VL format) or "
                    "openai:http://host:port/v1#model-name "
                    "(API key from OPENAI_API_KEY).")
    p.add_argument("--data", required=True, type=Path, help="the dataset folder (records.jsonl is updated in place)")
    p.add_argument("--assistant", required=True, metavar="SPEC", help="the medical assistant backend")
    p.add_argument("--critic", required=True, metavar="SPEC", help="the critic backend (may equal --assistant)")
    p.add_argument("--max-rounds", required=True, type=int, metavar="R", help="attempts per record before review")
    p.add_argument("--batch-size", type=int, default=8, help="records per batch (default 8)")
    p.add_argument("--limit", type=int, default=None, metavar="N", help="process at most N records")
    p.add_argument("--overwrite", action="store_true", help="regenerate records that already have a CoT")
    p.add_argument("--retry-review", action="store_true",
                   help="retry records left for human review by an earlier run (default: skip them)")
    p.add_argument("--max-new-tokens", type=int, default=256, help="generation length (default 256)")
    p.add_argument("--temperature", type=float, default=0.0, help="sampling temperature; 0 = greedy (default)")
    p.add_argument("--timeout", type=float, default=120.0, help="openai: seconds per request (default 120)")
    p.add_argument("--device", default="auto", help="hf: torch device (default: cuda if available, else cpu)")
    p.add_argument("--trust-remote-code", action="store_true", help="hf: allow the model folder's own code")
    p.set_defaults(func=cmd_cot)

    p = data_subparsers.add_parser("review", help="human review of generated CoTs: export HTML+CSV, import CSV")
    rsub = p.add_subparsers(dest="review_command", required=True)
    q = rsub.add_parser("export", help="write an HTML page and a CSV to fill in per batch of records")
    q.add_argument("--data", required=True, type=Path)
    q.add_argument("--out", required=True, type=Path, help="folder for batch_NNN.html / batch_NNN.csv")
    q.add_argument("--status", default="needs_review", choices=("needs_review", "all"),
                   help="needs_review (default): records the critic loop gave up on; all: every record with a CoT")
    q.add_argument("--batch-size", type=int, default=50, help="records per page (default 50)")
    q.set_defaults(func=cmd_review_export)
    q = rsub.add_parser("import", help="apply the accept/edit/reject decisions of filled-in CSVs")
    q.add_argument("--data", required=True, type=Path)
    q.add_argument("--csv", required=True, type=Path, nargs="+", metavar="FILE", help="CSV file(s) from export")
    q.set_defaults(func=cmd_review_import)


def cmd_convert(args: argparse.Namespace) -> int:
    from sim4seg.data.converters import CONVERTERS, ConvertOptions

    if args.source not in CONVERTERS:
        raise UserError(f"unknown --source {args.source!r}; one of: {', '.join(CONVERTERS)}")
    opts = ConvertOptions(seed=args.seed, strict=args.strict, negatives=args.negatives,
                          per_finding_targets=args.per_finding_targets)
    summary = CONVERTERS[args.source](args.root, args.out, opts)
    print(summary.line())
    if (why := summary.empty_reason()) is not None:  # a run that converts nothing must not look like success
        raise UserError(f"{args.source}: wrote 0 records to {args.out}: {why}")
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


def cmd_cot(args: argparse.Namespace) -> int:
    from sim4seg.data.cot import generate_cots

    options = {"max_new_tokens": args.max_new_tokens, "temperature": args.temperature, "timeout": args.timeout,
               "device": args.device, "trust_remote_code": args.trust_remote_code}
    summary = generate_cots(args.data, args.assistant, args.critic, args.max_rounds, batch_size=args.batch_size,
                            limit=args.limit, overwrite=args.overwrite, retry_review=args.retry_review,
                            backend_options=options)
    print(summary.line())
    if summary.needs_review:
        print(f"review them with: sim4seg data review export --data {args.data} --out REVIEW_DIR")
    return 0


def cmd_review_export(args: argparse.Namespace) -> int:
    from sim4seg.data.cot import export_review

    export_review(args.data, args.out, args.status, args.batch_size)
    return 0


def cmd_review_import(args: argparse.Namespace) -> int:
    from sim4seg.data.cot import import_review

    summary = import_review(args.data, args.csv)
    print(summary.line())
    return 1 if summary.bad else 0
