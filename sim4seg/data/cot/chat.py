"""The one thing every backend answers: a single-turn chat of one image and a text (:class:`ChatRequest`), and
the image handling the backends share."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np

MAX_IMAGE_SIDE = 1024  # images reach a backend downscaled to this longest side (the models resize anyway)


@dataclass
class ChatRequest:
    """One single-turn chat: a user message with one image (RGB uint8 ``[H, W, 3]``) and text."""

    text: str
    image: np.ndarray | None = None
    record_id: str = ""


@runtime_checkable
class Backend(Protocol):
    """Anything that answers a batch of chats, one reply string per request, in order."""

    def generate(self, batch: list[ChatRequest]) -> list[str]: ...


def fit_side(image: np.ndarray, max_side: int | None) -> np.ndarray:
    """RGB uint8 ``[H, W, 3]`` downscaled (area interpolation) so its longest side is at most ``max_side``."""
    import cv2

    h, w = image.shape[:2]
    if not max_side or max(h, w) <= max_side:
        return image
    s = max_side / max(h, w)
    return cv2.resize(image, (max(1, round(w * s)), max(1, round(h * s))), interpolation=cv2.INTER_AREA)


def png_bytes(image: np.ndarray) -> bytes:
    """RGB uint8 ``[H, W, 3]`` -> PNG bytes."""
    import cv2

    ok, buf = cv2.imencode(".png", np.ascontiguousarray(image[..., ::-1]))
    if not ok:
        raise RuntimeError("PNG encoding failed")
    return buf.tobytes()


def redact(spec: str) -> str:
    """A spec with any ``user:password@`` removed from its URL (what is written to the state file)."""
    return re.sub(r"(://)[^/@\s]+@", r"\1", spec)


def one_line(text: str) -> str:
    """Whitespace (newlines included) collapsed, for error messages quoting a server or a library."""
    return " ".join(str(text).split())
