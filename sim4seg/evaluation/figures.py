"""Figures of an evaluation: overlay PNGs (image | ground truth | prediction | RVLS2M region with the target's
outline, and its region figures)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from sim4seg.data.io import load_image, load_mask  # noqa: E402
from sim4seg.data.schema import Record  # noqa: E402
from sim4seg.metrics import cells_in_image as region_on_image  # noqa: E402  (the one placement of cells)


def overlay_png(path: Path, root: str | Path, rec: Record, pred: np.ndarray, cells: torch.Tensor | None,
                clip_view: str, row: dict) -> None:
    """Image | ground truth | prediction | region mask next to the target's outline, with the answer as title."""
    image = load_image(Path(root) / rec.image)
    hw = image.shape[:2]
    gt = np.zeros(hw, bool) if rec.is_negative else load_mask(Path(root) / rec.mask, hw)
    panels = [("image", None), ("ground truth" + (": no finding" if rec.is_negative else ""), gt),
              (f"prediction (IoU {row.get('iou', 0):.2f})", pred)]
    if cells is not None:
        figures = (f"\nprecision {row['region_precision']:.2f}, recall {row['region_recall']:.2f}, "
                   f"pointing {'hit' if row['pointing'] else 'miss'}" if "pointing" in row else "")
        panels.append(("RVLS2M region, target outlined" + figures, region_on_image(cells, hw, clip_view)))
    fig, axes = plt.subplots(1, len(panels), figsize=(3 * len(panels), 3.6))
    for ax, (title, m) in zip(axes, panels, strict=True):
        ax.imshow(image)
        if m is not None:
            ax.imshow(np.ma.masked_where(~m, m), alpha=0.5, cmap="autumn", vmin=0, vmax=1)
        if title.startswith("RVLS2M") and gt.any():
            ax.contour(gt.astype(float), levels=[0.5], colors="cyan", linewidths=1)
        ax.set_title(title, fontsize=8)
        ax.axis("off")
    answer = row.get("answer", "")
    fig.suptitle(f"{rec.id}  target: {', '.join(rec.diagnosis)}\n{answer[:110]}", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
