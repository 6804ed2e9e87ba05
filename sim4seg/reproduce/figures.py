"""The paper's figures 5-7 from our runs: PNGs and their tables, the published points beside ours."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from sim4seg.reproduce.runs import PAPER, Mode, eval_run, fmt, table, train_run, write_result  # noqa: E402


def fig6(mode: Mode) -> Path:
    ks = {12: "sim4seg_k12", 24: "sim4seg_k24", 36: "sim4seg_ft_cot", 48: "sim4seg_k48"}
    gs = {8: "sim4seg_g8", 16: "sim4seg_ft_cot", 32: "sim4seg_g32", 64: "sim4seg_g64"}
    score, truncated, region = {}, {}, {}
    for exp in {**{v: 0 for v in ks.values()}, **{v: 0 for v in gs.values()}}:
        o = eval_run(mode, exp, train_run(mode, exp))["overall"]
        score[exp], truncated[exp] = (o["gIoU"] + o["cIoU"]) / 2, o.get("truncated")
        region[exp] = [o.get(k) for k in ("region_precision", "region_recall", "pointing")]  # ours: on the lesion?
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
        rows += [[label.split(" ")[0] + f" = {x}", score[pts[x]], pub[str(x)], truncated[pts[x]], *region[pts[x]]]
                 for x in xs]
    fig.tight_layout()
    fig.savefig(mode.out / "fig6.png", dpi=100)
    plt.close(fig)
    body = table(["Setting", "mean(gIoU, cIoU)", "paper", "Truncated", "region precision", "region recall",
                  "pointing"], rows) + "\n\n![fig6](fig6.png)"
    return write_result(mode, "fig6", "Figure 6: tau strategy (top-k cells, grid size)", body,
                  {"score": score, "region": region, "points": {"k": {str(k): v for k, v in ks.items()},
                                                                "g": {str(g): v for g, v in gs.items()}}})


def fig7(mode: Mode) -> Path:
    run = train_run(mode, "sim4seg_ft_cot")
    grid = [1, 2, 4, 8]
    metrics = eval_run(mode, "sim4seg_ft_cot", run, "tts-sweep",
                       ("tts.m=[1,2,4,8]", "tts.n=[1,2,4,8]", "tts.select_mask=consensus",
                        "tts.select_diagnosis=majority"))
    res = metrics["tts"]
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
    body = table(["Setting", "deployable (majority / consensus)", "oracle (uses ground truth)", "paper (oracle)"],
                  rows) + ("\n\n`m` rows: Acc; `n` rows: mean(gIoU, cIoU). Truncated answers of path 0 (the greedy "
                           f"answer, the m = 1 point): {fmt(metrics['overall'].get('truncated'))} of "
                           f"{metrics['n_samples']}.\n\n![fig7](fig7.png)")
    return write_result(mode, "fig7", "Figure 7: test-time scaling", body, {"acc": acc, "seg": seg})


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
            gens = model.generate(batch, max_new_tokens=64 if not mode.smoke else 16,
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
    body = table(["Sample", "Target", "LISA answer", "Sim4Seg answer"], rows) + "\n\n![fig5](fig5.png)"
    return write_result(mode, "fig5", "Figure 5: case study", body, {"samples": [r.id for r in records]})


