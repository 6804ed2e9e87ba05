"""``openai:URL[#model]``: an OpenAI-compatible ``/chat/completions`` endpoint (vLLM, ...), standard library
only; the image is sent as a base64 PNG data URL and the API key is read from ``OPENAI_API_KEY`` only."""

from __future__ import annotations

import base64
import http.client
import json
import os
import time
import urllib.error
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from sim4seg.data.cot.chat import MAX_IMAGE_SIDE, ChatRequest, fit_side, one_line, png_bytes, redact
from sim4seg.errors import UserError

_TRANSIENT = (408, 429, 500, 502, 503, 504)


def data_url(image: np.ndarray, max_side: int | None = MAX_IMAGE_SIDE) -> str:
    """RGB uint8 ``[H, W, 3]`` -> ``data:image/png;base64,...`` (downscaled to ``max_side``)."""
    return "data:image/png;base64," + base64.b64encode(png_bytes(fit_side(image, max_side))).decode("ascii")


class OpenAIBackend:
    """An OpenAI-compatible chat-completions endpoint.

    ``base_url`` ends with ``/v1``; requests of a batch are sent concurrently (``concurrency``) so the server can
    batch them. Transient failures (timeouts, HTTP 429/5xx) are retried ``retries`` times; anything else, or an
    unreachable server, is a one-line :class:`UserError`. The key comes from ``OPENAI_API_KEY`` only.
    """

    def __init__(self, base_url: str, model: str | None = None, max_new_tokens: int = 256, temperature: float = 0.0,
                 timeout: float = 120.0, concurrency: int = 8, retries: int = 2) -> None:
        parts = urllib.parse.urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise UserError(f"openai backend URL {redact(base_url)!r} must look like http://host:port/v1")
        self.base_url = base_url.rstrip("/")
        self.model = model or None
        self.max_new_tokens = max_new_tokens
        self.temperature = temperature
        self.timeout = timeout
        self.concurrency = max(1, concurrency)
        self.retries = max(0, retries)

    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        key = os.environ.get("OPENAI_API_KEY")
        if key:
            headers["Authorization"] = f"Bearer {key}"
        return headers

    def _call(self, path: str, payload: dict | None = None) -> Any:
        url = f"{self.base_url}/{path}"
        shown = redact(url)
        body = None if payload is None else json.dumps(payload).encode("utf-8")
        for attempt in range(self.retries + 1):
            last = attempt >= self.retries
            req = urllib.request.Request(url, data=body, headers=self._headers(),
                                         method="GET" if payload is None else "POST")
            try:
                with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                    raw = resp.read()
            except urllib.error.HTTPError as e:
                detail = one_line(e.read()[:300].decode("utf-8", "replace"))
                if e.code not in _TRANSIENT or last:
                    raise UserError(f"{shown}: HTTP {e.code} {e.reason}: {detail or 'no details'}") from None
            except urllib.error.URLError as e:
                if not isinstance(e.reason, TimeoutError) or last:
                    raise UserError(f"cannot reach {shown}: {one_line(str(e.reason))} (is the server running and "
                                    "does the URL end with /v1?)") from None
            except TimeoutError:
                if last:
                    raise UserError(f"{shown}: no answer within {self.timeout:g} s (raise --timeout, or check the "
                                    "server)") from None
            except (OSError, http.client.HTTPException) as e:
                raise UserError(f"cannot reach {shown}: {type(e).__name__}: {one_line(str(e))}") from None
            else:
                try:
                    return json.loads(raw)
                except json.JSONDecodeError:
                    raise UserError(f"{shown}: the server did not answer with JSON "
                                    f"({one_line(raw[:120].decode('utf-8', 'replace'))!r})") from None
            time.sleep(min(2.0 ** attempt, 8.0))
        raise AssertionError("unreachable")

    def _resolve_model(self) -> str:
        if self.model is None:
            data = self._call("models")
            names = [m.get("id") for m in (data.get("data") or []) if isinstance(m, dict)] if isinstance(data, dict) \
                else []
            if len(names) != 1:
                raise UserError(f"{redact(self.base_url)} serves {len(names)} models ({', '.join(map(str, names))}); "
                                "name one in the spec: openai:URL#model-name")
            self.model = str(names[0])
        return self.model

    def _one(self, req: ChatRequest) -> str:
        content: list[dict] = [{"type": "text", "text": req.text}]
        if req.image is not None:
            content.insert(0, {"type": "image_url", "image_url": {"url": data_url(req.image)}})
        payload = {"model": self.model, "messages": [{"role": "user", "content": content}],
                   "max_tokens": self.max_new_tokens, "temperature": self.temperature}
        data = self._call("chat/completions", payload)
        try:
            msg = data["choices"][0]["message"]["content"]
        except (KeyError, IndexError, TypeError):
            raise UserError(f"{redact(self.base_url)}/chat/completions: unexpected reply "
                            f"{one_line(json.dumps(data)[:200])}") from None
        if isinstance(msg, list):  # content parts
            msg = "".join(p.get("text", "") for p in msg if isinstance(p, dict))
        return msg or ""

    def generate(self, batch: list[ChatRequest]) -> list[str]:
        if not batch:
            return []
        self._resolve_model()
        if len(batch) == 1 or self.concurrency == 1:
            return [self._one(r) for r in batch]
        with ThreadPoolExecutor(min(self.concurrency, len(batch))) as pool:
            return list(pool.map(self._one, batch))
