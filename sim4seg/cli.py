"""The ``sim4seg`` command: data tools, predict, app, export. Training and evaluation are
``python -m sim4seg.train`` / ``python -m sim4seg.eval`` (Hydra)."""

from __future__ import annotations

import argparse
import json
import sys

from sim4seg import deps
from sim4seg.errors import UserError
from sim4seg.inputs import DEPLOYABLE


def cmd_synth(args: argparse.Namespace) -> int:
    from sim4seg.data.synthetic import write_synthetic

    try:
        out = write_synthetic(args.out, args.n, args.seed, negatives=args.negatives, multi_target=args.multi_target)
    except (FileExistsError, ValueError) as e:
        raise UserError(str(e)) from None
    print(f"wrote {args.n} synthetic records to {out}")
    return 0


def _read_options(args: argparse.Namespace):
    from sim4seg.data.readers import ReadOptions

    return ReadOptions(frame=args.frame, axis=args.axis, slice=args.slice, window=args.window)


def cmd_predict(args: argparse.Namespace) -> int:
    from sim4seg import predict

    if (args.image is None) == (args.images is None):
        raise UserError("give --image FILE (one image) or --images DIR_OR_CSV (a batch), not both")
    common = {"max_new_tokens": args.max_new_tokens, "options": _read_options(args), "max_pixels": args.max_pixels,
              "m": args.tts_m, "n": args.tts_n, "select": args.select}
    if args.image is not None:
        res = predict.predict(args.ckpt, args.image, args.query, args.out, **common)
        print(res["answer"])
        print(json.dumps({k: v for k, v in res.items() if k != "answer"}))
        return 0
    if args.out is None:
        raise UserError("--images needs --out OUT (where predictions.jsonl and the masks go)")
    try:
        summary = predict.predict_batch(args.ckpt, args.images, args.out, args.query, **common)
    except KeyboardInterrupt:
        print(f"interrupted; rerun the same command to resume (images already in {args.out} are skipped)",
              file=sys.stderr)
        return 130
    print(predict.summary_line(summary))
    return 1 if summary["bad"] else 0


def cmd_app(args: argparse.Namespace) -> int:
    from sim4seg.app import serve

    return serve(args.ckpt, args.host, args.port, args.max_new_tokens)


def cmd_export(args: argparse.Namespace) -> int:
    from sim4seg.model.export import export

    print(f"exported to {export(args.ckpt, args.out)}")
    return 0


def add_read_options(p: argparse.ArgumentParser) -> None:
    """How a DICOM, NIfTI or multi-page file becomes one picture (sim4seg.data.readers.ReadOptions)."""
    from sim4seg.data.readers.window import WINDOW_CHOICES

    p.add_argument("--frame", type=int, default=0, help="DICOM frame / TIFF page / NIfTI volume (default 0)")
    p.add_argument("--axis", type=int, default=-1, help="NIfTI plane: 0 sagittal, 1 coronal, 2 axial (default)")
    p.add_argument("--slice", type=int, default=None, help="NIfTI slice index along --axis (default: the middle)")
    p.add_argument("--window", default="auto", help=f"intensity window: {', '.join(WINDOW_CHOICES)} or "
                   "CENTER,WIDTH (default auto: the file's own, else by modality)")


def build_parser() -> argparse.ArgumentParser:
    from sim4seg.data import commands as data_commands  # after deps.require: it loads numpy

    parser = argparse.ArgumentParser(prog="sim4seg", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    data = sub.add_parser("data", help="build, check and describe M3DS-format datasets")
    dsub = data.add_subparsers(dest="data_command", required=True)
    p = dsub.add_parser("synth", help="write a synthetic M3DS-format dataset (3 toy subsets)")
    p.add_argument("--out", required=True)
    p.add_argument("--n", type=int, default=300)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--negatives", type=float, default=0.0, help="fraction of images with no finding (label normal)")
    p.add_argument("--multi-target", type=float, default=0.0,
                   help="fraction of the other images with two findings, each with its own mask")
    p.set_defaults(func=cmd_synth)
    data_commands.register(dsub)

    p = sub.add_parser("predict", help="answer a question about an image (or a batch) and segment the finding",
                       description="One image: --image FILE --query Q [--out DIR]. A batch: --images DIR_OR_CSV --out "
                                   "DIR (resumable; one JSONL line per image). Formats: PNG, JPEG, TIFF, BMP, 16-bit "
                                   "PNG/TIFF, DICOM, NIfTI. Runs on the GPU when one is present.")
    p.add_argument("--ckpt", required=True, help="a finished run directory (sim4seg.train) or an export")
    p.add_argument("--image", default=None, help="one image file")
    p.add_argument("--images", default=None, help="a folder of images, or a CSV with columns image[,query]")
    p.add_argument("--query", default=None, help="the question (for a batch: rows without a query use it)")
    p.add_argument("--out", default=None, help="output folder (mask PNGs, overlay, JSON / predictions.jsonl)")
    p.add_argument("--max-new-tokens", type=int, default=None, help="default 128 (384 for CoT-trained runs)")
    p.add_argument("--max-pixels", type=int, default=None, help="refuse larger images (default: the run's "
                   "data.max_pixels)")
    add_read_options(p)
    p.add_argument("--tts-m", type=int, default=1, help="test-time scaling: answer paths (default 1: greedy)")
    p.add_argument("--tts-n", type=int, default=1, help="test-time scaling: region masks per path (default 1)")
    p.add_argument("--select", default=DEPLOYABLE[0], choices=DEPLOYABLE,
                   help="how the mask is chosen among the m x n candidates (deployable rules only)")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("app", help="a web app (Gradio) to upload an image, ask, and see the answer and mask")
    p.add_argument("--ckpt", default=None, help="a finished run directory (default: runs/demo)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: reachable from others)")
    p.add_argument("--port", type=int, default=7860)
    p.add_argument("--max-new-tokens", type=int, default=None, help="default 128 (384 for CoT-trained runs)")
    p.set_defaults(func=cmd_app)

    p = sub.add_parser("export", help="merge LoRA and write a self-contained model directory")
    p.add_argument("--ckpt", required=True, help="a run directory written by sim4seg.train")
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_export)

    def cmd_convert_lisa(args: argparse.Namespace) -> int:
        from sim4seg.convert_lisa.command import cmd_convert_lisa

        return cmd_convert_lisa(args)

    p = sub.add_parser("convert-lisa", help="turn a LISA release (LISA-7B-v1, LISA-13B-llama2-v1, or a Sim4Seg "
                       "release in LISA's format) into a model directory for eval/predict")
    p.add_argument("--src", required=True, help="the release folder (config.json, tokenizer, *.bin or *.safetensors)")
    p.add_argument("--clip", required=True, help="a local clip-vit-large-patch14 folder (weights + preprocessor)")
    p.add_argument("--out", required=True, help="the new model directory (must not exist or be empty)")
    p.add_argument("--name", default=None, help="model name in the model card (default: the --src folder name)")
    p.add_argument("--sam-variant", default="auto", choices=["auto", "vit_h", "vit_l", "vit_b"],
                   help="SAM variant; auto: from the image encoder's width and depth")
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"],
                   help="weight dtype; auto: keep the release's")
    p.set_defaults(func=cmd_convert_lisa)
    return parser


def main(argv: list[str] | None = None) -> int:
    deps.require(deps.CORE, "sim4seg")
    args = build_parser().parse_args(argv)
    if args.command == "app":
        deps.require(deps.APP, "sim4seg app")
    try:
        return args.func(args)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
