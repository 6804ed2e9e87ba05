"""The ``sim4seg`` command: data tools, predict, export. Training and evaluation are
``python -m sim4seg.train`` / ``python -m sim4seg.eval`` (Hydra)."""

from __future__ import annotations

import argparse
import json
import sys

from sim4seg.data import commands as data_commands
from sim4seg.errors import UserError


def cmd_synth(args: argparse.Namespace) -> int:
    from sim4seg.data.synthetic import write_synthetic

    try:
        out = write_synthetic(args.out, args.n, args.seed)
    except FileExistsError as e:
        raise UserError(str(e)) from None
    print(f"wrote {args.n} synthetic records to {out}")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from sim4seg.predict import predict

    res = predict(args.ckpt, args.image, args.query, args.out, args.max_new_tokens)
    print(res["answer"])
    print(json.dumps({k: v for k, v in res.items() if k not in ("answer", "region_cells")}))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from sim4seg.model.export import export

    print(f"exported to {export(args.ckpt, args.out)}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sim4seg", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    data = sub.add_parser("data", help="build, check and describe M3DS-format datasets")
    dsub = data.add_subparsers(dest="data_command", required=True)
    p = dsub.add_parser("synth", help="write a synthetic M3DS-format dataset (3 toy subsets)")
    p.add_argument("--out", required=True)
    p.add_argument("--n", type=int, default=300)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_synth)
    data_commands.register(dsub)

    p = sub.add_parser("predict", help="answer a question about one image and segment the finding")
    p.add_argument("--ckpt", required=True, help="a run directory written by sim4seg.train")
    p.add_argument("--image", required=True)
    p.add_argument("--query", required=True)
    p.add_argument("--out", default=None, help="folder for the mask PNG, overlay PNG and JSON")
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("export", help="merge LoRA and write a self-contained model directory")
    p.add_argument("--ckpt", required=True, help="a run directory written by sim4seg.train")
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_export)

    def cmd_convert_lisa(args: argparse.Namespace) -> int:
        from sim4seg.model.convert import cmd_convert_lisa

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
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
