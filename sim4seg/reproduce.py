"""Reproduce the paper's tables and figures: run what is missing, collect metrics.json files, and write
``results/<name>.md`` (ours beside the published numbers), ``results/<name>.json`` and a PNG for figures.

    python -m sim4seg.reproduce table2 --lisa-dir /models/lisa7b-converted --data /data/m3ds
    python -m sim4seg.reproduce fig6 --smoke          # same pipeline: synthetic data, tiny model, a few steps

Every row or point is a Hydra experiment in ``configs/experiment``; training runs go to ``<out>/runs/<exp>``,
evaluations to ``<out>/evals/<exp>[-variant]``, and finished ones (``trainable.safetensors``, ``metrics.json``)
are skipped, so an interrupted script continues where it stopped.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from sim4seg.config import compose  # noqa: E402
from sim4seg.errors import UserError  # noqa: E402

PAPER = json.loads((Path(__file__).with_name("paper_results.json")).read_text())
PAPER_SUBSETS = ["FracAtlas", "BoneFracture", "BFD", "ISBI", "ISIC", "Kvasir-SEG", "BUSI", "TN3K", "ChestX-Det",
                 "FIVES"]
LOMO = {"x-ray": "xray", "dermoscopy": "dermoscopy", "endoscopy": "endoscopy", "ultrasound": "ultrasound",
        "fundus": "fundus"}
LODO = {"ISIC": "isic", "Kvasir-SEG": "kvasirseg", "TN3K": "tn3k", "ChestX-Det": "chestxdet", "FIVES": "fives"}
# In smoke mode the synthetic subsets stand in for the held-out datasets that have a synthetic counterpart.
SMOKE_LODO = {"ISIC": "SynthDerm", "TN3K": "SynthUS", "ChestX-Det": "SynthChest"}
SMOKE_MODALITIES = ("x-ray", "dermoscopy", "ultrasound")


@dataclass
class Mode:
    out: Path
    smoke: bool
    data: Path
    lisa_dir: str | None = None
    train_extra: list[str] = field(default_factory=list)
    eval_extra: list[str] = field(default_factory=list)

    def model_overrides(self) -> list[str]:
        if self.smoke:
            return ["model=tiny"]
        if not self.lisa_dir:
            raise UserError("full runs start from LISA: pass --lisa-dir (a `sim4seg convert-lisa` output)")
        return ["model=lisa_7b_converted", f"model.lisa_dir={self.lisa_dir}"]


def make_mode(args: argparse.Namespace) -> Mode:
    out = Path(args.out or ("results/smoke" if args.smoke else "results"))
    if args.smoke:
        data = out / "data"
        if not (data / "records.jsonl").exists():
            from sim4seg.data.synthetic import write_synthetic

            write_synthetic(data, n=48, seed=0, progress=False)
        return Mode(out, True, data,
                    train_extra=["train.max_steps=2", "train.micro_batch=2", "train.grad_accum=1",
                                 "train.warmup_steps=1", "train.save_every=0", "train.eval_every=0",
                                 "train.progress=false", "wandb.mode=disabled"],
                    eval_extra=["max_samples=6", "max_new_tokens=8", "overlays_per_subset=1", "progress=false",
                                "batch_size=6"])
    if not args.data:
        raise UserError("pass --data (the M3DS folder built as in data/README.md)")
    return Mode(out, False, Path(args.data), args.lisa_dir)


def train_run(mode: Mode, exp: str, extra: tuple[str, ...] = ()) -> Path:
    """Train experiment ``exp`` unless its run directory is finished; returns the run directory."""
    from sim4seg.training import train

    run = mode.out / "runs" / exp
    if (run / "trainable.safetensors").exists():
        return run
    overrides = [f"experiment={exp}", *mode.model_overrides(), f"data.root={mode.data}", f"train.output_dir={run}",
                 f"train.resume={(run / 'checkpoints' / 'latest').exists()}", *mode.train_extra, *extra]
    cfg = compose("train", overrides)
    print(f"[train] {exp}", flush=True)
    train(cfg)
    return run


def eval_run(mode: Mode, exp: str, run: Path, variant: str = "", extra: tuple[str, ...] = ()) -> dict:
    """Evaluate a run on the test split unless done; returns its metrics.json."""
    from sim4seg.evaluation import evaluate

    out = mode.out / "evals" / (exp + (f"-{variant}" if variant else ""))
    if not (out / "metrics.json").exists():
        overrides = [f"ckpt={run}", f"data.root={mode.data}", "split=test", "mode=generate", f"out={out}",
                     *mode.eval_extra, *extra]
        cfg = compose("eval", overrides)
        print(f"[eval] {out.name}", flush=True)
        evaluate(cfg)
    return json.loads((out / "metrics.json").read_text())


def _f(x) -> str:
    if x is None:
        return "-"
    return x if isinstance(x, str) else f"{x:.2f}"


def _table(head: list[str], rows: list[list]) -> str:
    return "\n".join(["| " + " | ".join(head) + " |", "|" + "---|" * len(head)] +
                     ["| " + " | ".join(_f(c) for c in r) + " |" for r in rows])


def _write(mode: Mode, name: str, title: str, body: str, data: dict) -> Path:
    note = ("Smoke run: synthetic data, tiny random model, 2 training steps per run. It checks the pipeline; its "
            "numbers say nothing about the method." if mode.smoke else "")
    md = mode.out / f"{name}.md"
    md.write_text(f"# {title}\n\n{note}\n\n{body}\n\nAll numbers in percent. `paper` columns: published values.\n")
    (mode.out / f"{name}.json").write_text(json.dumps(data, indent=1))
    print(f"wrote {md}")
    return md


TTS_PAPER = ["tts.m=2", "tts.n=2", "tts.select_mask=oracle", "tts.select_diagnosis=oracle"]
TTS_DEPLOYABLE = ["tts.m=2", "tts.n=2", "tts.select_mask=consensus", "tts.select_diagnosis=majority"]
TABLE2 = [("LISA", "lisa_zeroshot"), ("LISA (ft)", "lisa_ft_seg"), ("LISA (ft-diagnosis)", "lisa_ft_diagnosis"),
          ("LISA (ft-CoT)", "lisa_ft_cot"), ("Sim4Seg (ft-diagnosis)", "sim4seg_ft_diagnosis"),
          ("Sim4Seg (ft-CoT)", "sim4seg_ft_cot")]


def table2(mode: Mode) -> Path:
    rows, data = [], {}
    paper = PAPER["table2_overall"]
    for label, exp in TABLE2:
        o = eval_run(mode, exp, train_run(mode, exp))["overall"]
        p = paper[label]
        rows.append([label, o["gIoU"], o["cIoU"], o["Acc"], p.get("gIoU"), p.get("cIoU"), p.get("Acc")])
        data[label] = o
    run = train_run(mode, "sim4seg_ft_cot")
    p = paper["Sim4Seg (ft-CoT) + test-time scaling"]
    for label, variant, extra in (("Sim4Seg (ft-CoT) + TTS (oracle: uses ground truth)", "tts-oracle", TTS_PAPER),
                                  ("Sim4Seg (ft-CoT) + TTS (consensus mask, majority vote)", "tts", TTS_DEPLOYABLE)):
        o = eval_run(mode, "sim4seg_ft_cot", run, variant, tuple(extra))["overall"]
        rows.append([label, o["gIoU"], o["cIoU"], o["Acc"], p["gIoU"], p["cIoU"], p["Acc"]])
        data[label] = o
    body = _table(["Method", "gIoU", "cIoU", "Acc", "gIoU (paper)", "cIoU (paper)", "Acc (paper)"], rows)
    body += ("\n\nThe paper's TTS row selects with the ground truth (its Eq. 13); our oracle row does the same, the "
             "other row uses only what a deployed system has (m = 2, n = 2 as in the paper).")
    return _write(mode, "table2", "Table 2: overall results on the M3DS test split", body, data)


def table3(mode: Mode) -> Path:
    cols = [
        ("w/o RVLS2M", "zero-shot", "lisa_zeroshot", "", ()),
        ("w/o RVLS2M", "FT w/o diagnosis", "lisa_ft_seg", "", ()),
        ("w/o RVLS2M", "FT w/ diagnosis", "lisa_ft_diagnosis", "", ()),
        ("w/o RVLS2M", "FT w/ diagnosis-CoT", "lisa_ft_cot", "", ()),
        ("w/ RVLS2M", "FT w/ diagnosis", "sim4seg_ft_diagnosis", "", ()),
        ("w/ RVLS2M", "FT w/ diagnosis-CoT", "sim4seg_ft_cot", "", ()),
        ("w/ RVLS2M", "FT w/ diagnosis-CoT (TTS)", "sim4seg_ft_cot", "tts-oracle", tuple(TTS_PAPER)),
    ]
    results = {f"{a} / {b}": eval_run(mode, exp, train_run(mode, exp), v, x) for a, b, exp, v, x in cols}
    subsets = PAPER_SUBSETS if not mode.smoke else sorted({s for r in results.values() for s in r["subsets"]})
    blocks, paper = [], PAPER["table3_per_subset"]
    for metric in ("gIoU", "cIoU", "Acc"):
        rows = []
        for (a, b, *_), (key, res) in zip(cols, results.items()):
            ours = [res["subsets"].get(s, {}).get(metric) for s in subsets] + [res["avg"].get(metric)]
            pub = paper.get(a, {}).get(b, {}).get(metric, {})
            rows.append([key + (" (oracle: uses ground truth)" if "TTS" in b else "")] + ours)
            if not mode.smoke:
                rows.append([key + " — paper"] + [pub.get(s) for s in subsets] + [pub.get("Avg.")])
        blocks.append(f"### {metric}\n\n" + _table(["Setting"] + subsets + ["Avg."], rows))
    return _write(mode, "table3", "Table 3: per-subset results", "\n\n".join(blocks), results)


def table4(mode: Mode) -> Path:
    run = train_run(mode, "lisa_zeroshot")
    rows, data, paper = [], {}, PAPER["table4_zero_shot_rvls2m"]
    for label, variant, extra in (("LISA", "", ()), ("LISA w/ RVLS2M module", "rvls2m", ("rvls2m=paper",))):
        o = eval_run(mode, "lisa_zeroshot", run, variant, extra)["overall"]
        p = paper[label]
        avg = (o["gIoU"] + o["cIoU"]) / 2
        rows.append([label, o["gIoU"], o["cIoU"], avg, p["gIoU"], p["cIoU"], p["Avg."]])
        data[label] = o
    body = _table(["Method", "gIoU", "cIoU", "Avg.", "gIoU (paper)", "cIoU (paper)", "Avg. (paper)"], rows)
    return _write(mode, "table4", "Table 4: RVLS2M plugged into zero-shot LISA at inference only", body, data)


def leave_one_out(mode: Mode, name: str) -> Path:
    modality = name == "table5"
    items = LOMO if modality else LODO
    paper = PAPER["table5_leave_one_modality_out" if modality else "table6_leave_one_dataset_out"]
    rows, data = [], {}
    for item, slug in items.items():
        held = item
        if mode.smoke:
            held = item if modality else SMOKE_LODO.get(item)
            if held is None or (modality and item not in SMOKE_MODALITIES):
                rows.append([item, "-", "-", "-", "-", *paper[item]["LISA"], *paper[item]["Sim4Seg"]])
                continue
        key = "exclude_modalities" if modality else "exclude_subsets"
        test_key = "include_modalities" if modality else "include_subsets"
        res = {}
        for who in ("lisa", "sim4seg"):
            exp = f"{'lomo' if modality else 'lodo'}_{who}_{slug}"
            run = train_run(mode, exp, (f"data.{key}=[{held}]",))
            res[who] = eval_run(mode, exp, run, "", (f"data.{test_key}=[{held}]",))["overall"]
        rows.append([item, res["lisa"]["gIoU"], res["lisa"]["cIoU"], res["sim4seg"]["gIoU"], res["sim4seg"]["cIoU"],
                     *paper[item]["LISA"], *paper[item]["Sim4Seg"]])
        data[item] = res
    head = ["Held out", "LISA gIoU", "LISA cIoU", "Sim4Seg gIoU", "Sim4Seg cIoU", "LISA gIoU (paper)",
            "LISA cIoU (paper)", "Sim4Seg gIoU (paper)", "Sim4Seg cIoU (paper)"]
    what = "modality" if modality else "dataset"
    return _write(mode, name, f"Table {name[-1]}: leave-one-{what}-out (train on the rest, test on the held-out "
                  f"{what})", _table(head, rows), data)


def fig6(mode: Mode) -> Path:
    ks = {12: "sim4seg_k12", 24: "sim4seg_k24", 36: "sim4seg_ft_cot", 48: "sim4seg_k48"}
    gs = {8: "sim4seg_g8", 16: "sim4seg_ft_cot", 32: "sim4seg_g32", 64: "sim4seg_g64"}
    score = {}
    for exp in {**{v: 0 for v in ks.values()}, **{v: 0 for v in gs.values()}}:
        o = eval_run(mode, exp, train_run(mode, exp))["overall"]
        score[exp] = (o["gIoU"] + o["cIoU"]) / 2
    paper = PAPER["fig6_tau"]
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    rows = []
    for ax, (label, pts, pub) in zip(axes, (("top-k (g = 16)", ks, paper["topk_at_g16"]),
                                            ("grid g (k = 36)", gs, paper["grid_at_k36"]))):
        xs = list(pts)
        ax.plot(xs, [score[pts[x]] for x in xs], "o-", label="ours")
        ax.plot(xs, [pub[str(x)] for x in xs], "s--", label="paper")
        ax.set_xlabel(label)
        ax.set_ylabel("mean(gIoU, cIoU) %")
        ax.set_xticks(xs)
        ax.legend()
        rows += [[label.split(" ")[0] + f" = {x}", score[pts[x]], pub[str(x)]] for x in xs]
    fig.tight_layout()
    fig.savefig(mode.out / "fig6.png", dpi=100)
    plt.close(fig)
    body = _table(["Setting", "mean(gIoU, cIoU)", "paper"], rows) + "\n\n![fig6](fig6.png)"
    return _write(mode, "fig6", "Figure 6: tau strategy (top-k cells, grid size)", body,
                  {"score": score, "points": {"k": {str(k): v for k, v in ks.items()},
                                              "g": {str(g): v for g, v in gs.items()}}})


def fig7(mode: Mode) -> Path:
    run = train_run(mode, "sim4seg_ft_cot")
    grid = [1, 2, 4, 8]
    res = eval_run(mode, "sim4seg_ft_cot", run, "tts-sweep",
                   ("tts.m=[1,2,4,8]", "tts.n=[1,2,4,8]", "tts.select_mask=consensus",
                    "tts.select_diagnosis=majority"))["tts"]
    paper = PAPER["fig7_tts"]
    acc = {sel: [res[f"m={m},n=1"][sel]["Acc"] for m in grid] for sel in ("selected", "oracle")}
    seg = {sel: [(res[f"m=1,n={n}"][sel]["gIoU"] + res[f"m=1,n={n}"][sel]["cIoU"]) / 2 for n in grid]
           for sel in ("selected", "oracle")}

    def pub(d: dict, xs: list[int]) -> list[float | None]:
        return [float(str(d[str(x)]).lstrip("~")) if str(x) in d else None for x in xs]

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    for ax, ys, pub_ys, xlabel, ylabel, deploy in (
            (axes[0], acc, pub(paper["m_paths_Acc"], grid), "m (CoT paths), n = 1", "Acc %", "majority vote"),
            (axes[1], seg, pub(paper["n_perturbations_mean_gIoU_cIoU"], grid), "n (region masks), m = 1",
             "mean(gIoU, cIoU) %", "consensus mask")):
        ax.plot(grid, ys["oracle"], "o-", label="oracle (uses ground truth)")
        ax.plot(grid, ys["selected"], "^-", label=deploy)
        px = [x for x, y in zip(grid, pub_ys) if y is not None]
        ax.plot(px, [y for y in pub_ys if y is not None], "s--", label="paper (oracle)")
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.set_xticks(grid)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(mode.out / "fig7.png", dpi=100)
    plt.close(fig)
    rows = [[f"m = {m}", acc["selected"][i], acc["oracle"][i], pub(paper["m_paths_Acc"], grid)[i]]
            for i, m in enumerate(grid)]
    rows += [[f"n = {n}", seg["selected"][i], seg["oracle"][i], pub(paper["n_perturbations_mean_gIoU_cIoU"], grid)[i]]
             for i, n in enumerate(grid)]
    body = _table(["Setting", "deployable (majority / consensus)", "oracle (uses ground truth)", "paper (oracle)"],
                  rows) + "\n\n`m` rows: Acc; `n` rows: mean(gIoU, cIoU).\n\n![fig7](fig7.png)"
    return _write(mode, "fig7", "Figure 7: test-time scaling", body, {"acc": acc, "seg": seg})


def fig5(mode: Mode, n: int = 4) -> Path:
    """Case study: image, ground truth, region mask, LISA's and Sim4Seg's masks and answers for n test samples."""
    import numpy as np
    import torch

    from sim4seg.data.dataset import M3DSDataset, collate
    from sim4seg.data.io import load_image, load_mask
    from sim4seg.evaluation.figures import region_on_image
    from sim4seg.model.checkpoint import load_run

    runs = {who: train_run(mode, exp) for who, exp in (("LISA", "lisa_ft_cot"), ("Sim4Seg", "sim4seg_ft_cot"))}
    outs = {}
    for who, run in runs.items():
        model, proc, _ = load_run(run)
        model.eval()
        ds = M3DSDataset(mode.data, "test", proc, "cot", with_answer=False)
        picks = list(range(0, len(ds), max(1, len(ds) // n)))[:n]
        batch = collate(proc, [ds[i] for i in picks], left_pad=True)
        with torch.no_grad():
            gens = model.generate(batch, max_new_tokens=64 if not mode.smoke else 8,
                                  eos_token_id=proc.tokenizer.eos_token_id, pad_token_id=proc.tokenizer.pad_token_id)
        outs[who] = [(g, proc.tokenizer.decode(g.tokens, skip_special_tokens=False)) for g in gens]
        records, clip_view = [ds.records[i] for i in picks], model.clip_view
    fig, axes = plt.subplots(len(records), 5, figsize=(15, 3.2 * len(records)), squeeze=False)
    for r, rec in enumerate(records):
        image = load_image(mode.data / rec.image)
        gt = load_mask(mode.data / rec.mask, image.shape[:2])
        g_sim = outs["Sim4Seg"][r][0]
        region = (region_on_image(g_sim.decoded.cells[0], image.shape[:2], clip_view)
                  if g_sim.n_seg and g_sim.decoded.cells is not None else np.zeros_like(gt))
        panels = [("image", None), ("ground truth", gt), ("RVLS2M region (Sim4Seg)", region)]
        for who in ("LISA", "Sim4Seg"):
            g, text = outs[who][r]
            m = (g.decoded.logits[0] > 0).numpy() if g.n_seg else np.zeros_like(gt)
            panels.append((f"{who}: {text[:60]}", m))
        for ax, (title, m) in zip(axes[r], panels):
            ax.imshow(image)
            if m is not None:
                ax.imshow(np.ma.masked_where(~m, m), alpha=0.5, cmap="autumn", vmin=0, vmax=1)
            ax.set_title(title, fontsize=7)
            ax.axis("off")
    fig.tight_layout()
    fig.savefig(mode.out / "fig5.png", dpi=80)
    plt.close(fig)
    rows = [[rec.id, ", ".join(rec.diagnosis), outs["LISA"][i][1][:120], outs["Sim4Seg"][i][1][:120]]
            for i, rec in enumerate(records)]
    body = _table(["Sample", "Target", "LISA answer", "Sim4Seg answer"], rows) + "\n\n![fig5](fig5.png)"
    return _write(mode, "fig5", "Figure 5: case study", body, {"samples": [r.id for r in records]})


TARGETS = {"table2": table2, "table3": table3, "table4": table4,
           "table5": lambda m: leave_one_out(m, "table5"), "table6": lambda m: leave_one_out(m, "table6"),
           "fig5": fig5, "fig6": fig6, "fig7": fig7}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("target", choices=list(TARGETS))
    ap.add_argument("--smoke", action="store_true", help="synthetic data, tiny model, a few steps per run")
    ap.add_argument("--data", help="M3DS folder (full runs)")
    ap.add_argument("--lisa-dir", help="LISA-7B converted with `sim4seg convert-lisa` (full runs)")
    ap.add_argument("--out", help="results folder (default results/, or results/smoke with --smoke)")
    args = ap.parse_args(argv)
    try:
        mode = make_mode(args)
        mode.out.mkdir(parents=True, exist_ok=True)
        TARGETS[args.target](mode)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
