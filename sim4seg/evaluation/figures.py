"""Figures of an evaluation: overlay PNGs (image | ground truth | prediction | RVLS2M region mask)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from sim4seg.data.io import load_image, load_mask  # noqa: E402
from sim4seg.data.schema import Record  # noqa: E402
from sim4seg.model.rvls2m import to_mask_prompt  # noqa: E402


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
