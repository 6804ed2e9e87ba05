"""Reports: metrics.json, metrics.md in the paper's table layouts, and overlay PNGs."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from sim4seg.data.io import load_image, load_mask  # noqa: E402
from sim4seg.data.schema import Record  # noqa: E402
from sim4seg.model.rvls2m import to_mask_prompt  # noqa: E402

ORACLE_NOTE = "(oracle: uses ground truth)"


def _f(x) -> str:
    return "-" if x is None else f"{x:.2f}"


def table3(result: dict, vocab: dict) -> str:
    """Per-subset layout of the paper's Table 3: metrics as rows, subsets as columns, Avg. = mean over subsets."""
    per = result["subsets"]
    cols = list(per)
    keys = [k for k in ("gIoU", "cIoU", "Dice", "Acc") if k in result.get("avg", {})]
    head = "| Metric | " + " | ".join(vocab[c].short if c in vocab else c for c in cols) + " | Avg. |"
    lines = [head, "|---" * (len(cols) + 2) + "|"]
    for k in keys:
        lines.append(f"| {k} | " + " | ".join(_f(per[c][k]) for c in cols) + f" | {_f(result['avg'][k])} |")
    lines.append("| n | " + " | ".join(str(per[c]["n"]) for c in cols) + f" | {result['n_samples']} |")
    return "\n".join(lines)


def table2(result: dict, name: str = "this run") -> str:
    """The paper's Table 2 row: pooled over all samples."""
    o = result["overall"]
    return "\n".join(["| Method | gIoU | cIoU | Acc |", "|---|---|---|---|",
                      f"| {name} | {_f(o.get('gIoU'))} | {_f(o.get('cIoU'))} | {_f(o.get('Acc'))} |"])


def tts_table(result: dict) -> str:
    sel = result["selection"]
    head = (f"| m, n | gIoU ({sel['mask']}) | cIoU ({sel['mask']}) | Acc ({sel['diagnosis']}) | "
            f"gIoU {ORACLE_NOTE} | cIoU {ORACLE_NOTE} | Acc {ORACLE_NOTE} |")
    lines = [head, "|---|---|---|---|---|---|---|"]
    for k, v in result["tts"].items():
        s, o = v["selected"], v["oracle"]
        lines.append(f"| {k} | {_f(s['gIoU'])} | {_f(s['cIoU'])} | {_f(s.get('Acc'))} | {_f(o['gIoU'])} | "
                     f"{_f(o['cIoU'])} | {_f(o.get('Acc'))} |")
    return "\n".join(lines)


def write_reports(out: Path, result: dict, vocab: dict) -> None:
    (out / "metrics.json").write_text(json.dumps(result, indent=1))
    sel = result["selection"]
    md = [f"# Evaluation: {result['mode']} on split {result['split']}", "",
          f"{result['n_samples']} samples scored, {result['n_errors']} left out (errors); flags: {result['flags']}. "
          "All numbers in percent.", ""]
    if result["mode"] == "generate":
        md += [f"Selection: mask `{sel['mask']}`{' ' + ORACLE_NOTE if sel['mask'] == 'oracle' else ''}, "
               f"diagnosis `{sel['diagnosis']}`{' ' + ORACLE_NOTE if sel['diagnosis'] == 'oracle' else ''}.", ""]
    md += ["## Per subset (Table 3 layout)", "", table3(result, vocab), "", "## Overall (Table 2 layout)", "",
           table2(result), ""]
    if "tts" in result:
        md += ["## Test-time scaling", "", tts_table(result), ""]
    (out / "metrics.md").write_text("\n".join(md))


def region_on_image(cells: torch.Tensor, hw: tuple[int, int], clip_view: str) -> np.ndarray:
    """The region mask (bool [g, g]) drawn at the image's own resolution, through RVLS2M's own geometry."""
    side = max(hw)
    prompt = to_mask_prompt(cells[None], [hw], clip_view, size=side)[0, 0]
    return prompt[: hw[0], : hw[1]].numpy() > 0.5


def overlay_png(path: Path, root: str | Path, rec: Record, pred: np.ndarray, cells: torch.Tensor | None,
                clip_view: str, row: dict) -> None:
    """Image | ground truth | prediction | region mask, with the answer as the title."""
    image = load_image(Path(root) / rec.image)
    gt = load_mask(Path(root) / rec.mask, image.shape[:2])
    panels = [("image", None), ("ground truth", gt), (f"prediction (IoU {row.get('iou', 0):.2f})", pred)]
    if cells is not None:
        panels.append(("RVLS2M region", region_on_image(cells, image.shape[:2], clip_view)))
    fig, axes = plt.subplots(1, len(panels), figsize=(3 * len(panels), 3.4))
    for ax, (title, m) in zip(axes, panels):
        ax.imshow(image)
        if m is not None:
            ax.imshow(np.ma.masked_where(~m, m), alpha=0.5, cmap="autumn", vmin=0, vmax=1)
        ax.set_title(title, fontsize=9)
        ax.axis("off")
    answer = row.get("answer", "")
    fig.suptitle(f"{rec.id}  target: {', '.join(rec.diagnosis)}\n{answer[:110]}", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
