"""``sim4seg data cot``: fill the ``cot`` field of a dataset with the paper's multi-role pipeline (Section 2.2, Fig. 3).

For each record without a CoT:

1. The **medical assistant** (HuatuoGPT-Vision in the paper) gets the image, the record's question and the KNOWN
   diagnosis in a structured prompt asking for modality -> image analysis -> diagnosis, as three sentences
   "Firstly, ... Secondly, ... Finally, the diagnosis is <label>."
2. A **rule gate** (:func:`check_cot`) checks the three parts and that the CoT ends in the known diagnosis (the
   accuracy rule of :func:`sim4seg.metrics.diagnosis_correct`); a failure is a rejection with the gate's reason,
   and the critic is not asked.
3. The **critic assistant** answers ACCEPT or REJECT with a reason (:func:`parse_verdict`).
4. A rejection (gate or critic) is fed back into the next attempt's prompt. After ``max_rounds`` attempts the
   record is marked ``needs_review``; ``sim4seg data review export|import`` is the human-assisted review.

Only accepted CoTs are written to ``records.jsonl`` (so training never sees an unreviewed one). The per-record
history (attempts, verdicts, reasons, rounds, status ``accepted | needs_review | rejected | failed``) lives in the
sidecar ``cot_state.jsonl``. Both files are rewritten atomically (temp file + ``os.replace``) after every batch,
so a crash loses at most the batch in flight; a rerun skips records that already have a CoT.

Backends (:class:`Backend`), chosen by a SPEC string:

- ``hf:/path/to/llava-dir``: a local transformers LLaVA-format model (``LlavaForConditionalGeneration`` + its
  processor), batched greedy generation with left padding; nothing is downloaded.
- ``openai:http://host:port/v1#model-name``: an OpenAI-compatible ``/chat/completions`` endpoint (e.g. vLLM),
  the image sent as a base64 PNG data URL; the API key is read from ``OPENAI_API_KEY`` only (never stored).
"""

from __future__ import annotations

import base64
import json
import os
import re
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from sim4seg.data.prompts import IMAGE_TOKEN, SEG_TOKEN, join_labels, prompt_text
from sim4seg.data.schema import RECORDS, Record, RecordError, parse_record, resolve_path
from sim4seg.data.vocab import Subset, load_vocabulary
from sim4seg.errors import UserError

STATE = "cot_state.jsonl"
STATUSES = ("accepted", "needs_review", "rejected", "failed")
MAX_IMAGE_SIDE = 1024  # images sent over HTTP are downscaled to this longest side (the model resizes anyway)

# ----------------------------------------------------------------------------------------------------------
# Prompts, rule gate, verdicts
# ----------------------------------------------------------------------------------------------------------


def diagnosis_text(rec: Record) -> str:
    return join_labels(rec.diagnosis, "and")


def assistant_prompt(rec: Record, subset: Subset, feedback: str | None = None, previous: str | None = None) -> str:
    """The structured prompt of the medical assistant: question + known diagnosis -> three-step CoT."""
    dx = diagnosis_text(rec)
    organ = f" of the {subset.organ}" if subset.organ else ""
    text = (
        f"You are an experienced medical imaging expert. This is a {rec.modality} image{organ}.\n"
        f"Question: {rec.query}\n"
        f"The confirmed diagnosis is: {dx}.\n"
        f"Explain step by step how this image leads to the diagnosis, in exactly three sentences:\n"
        f"1. Identify the image modality, starting with \"Firstly, the modality of this image is\".\n"
        f"2. Analyse the image, starting with \"Secondly, the image analysis shows\", describing the visible "
        f"{subset.finding} (location, size, shape, margins, intensity or colour) that supports the diagnosis.\n"
        f"3. Conclude with exactly \"Finally, the diagnosis is {dx}.\"\n"
        "Do not say that the diagnosis was given to you and do not add anything else."
    )
    if feedback:
        text += f"\n\nA reviewer rejected your previous answer because: {feedback}"
        if previous:
            text += f"\nYour previous answer was: \"{previous}\""
        text += "\nWrite a new answer that fixes this."
    return text


def critic_prompt(rec: Record, subset: Subset, cot: str) -> str:
    """The critic assistant's prompt: judge one CoT against the image and the known diagnosis."""
    return (
        f"You are a critical senior medical reviewer. This is a {rec.modality} image"
        f"{f' of the {subset.organ}' if subset.organ else ''}.\n"
        f"Question: {rec.query}\n"
        f"The confirmed diagnosis is: {diagnosis_text(rec)}.\n"
        f"A medical assistant wrote this diagnostic reasoning for the image:\n\"{cot}\"\n"
        "Check that (1) the modality is correct, (2) the image analysis describes findings that are visible in "
        "this image and consistent with the diagnosis, and (3) the reasoning leads to the diagnosis without "
        "contradictions or invented details.\n"
        "Reply with ACCEPT or REJECT as the first word, followed by a colon and a one-sentence reason."
    )


_PARTS = (("firstly", "the modality sentence \"Firstly, ...\""),
          ("secondly", "the image-analysis sentence \"Secondly, ...\""),
          ("finally", "the diagnosis sentence \"Finally, the diagnosis is ...\""))
_MIN_PART_WORDS = 3


def clean_cot(text: str) -> str:
    """Assistant output -> candidate CoT: markdown emphasis dropped, whitespace collapsed, chatter before
    "Firstly" and surrounding quotes removed."""
    text = " ".join(text.replace("**", "").replace("__", "").split())
    m = re.search(r"\bfirstly\b", text, re.IGNORECASE)
    if m:
        text = text[m.start():]
    return text.strip().strip("\"'`“”").strip()


def check_cot(cot: str, diagnosis: list[str], subset: Subset) -> str | None:
    """The rule gate: ``None`` when ``cot`` has the three parts in order and ends in exactly the known diagnosis,
    else a one-line reason (fed back to the assistant)."""
    if not cot.strip():
        return "the answer is empty"
    if SEG_TOKEN.lower() in cot.lower() or IMAGE_TOKEN in cot:
        return f"the answer contains the reserved token {SEG_TOKEN} or {IMAGE_TOKEN}"
    starts = []
    for word, what in _PARTS:
        m = re.search(rf"\b{word}\b", cot, re.IGNORECASE)
        if m is None:
            return f"it lacks {what}"
        starts.append((m.start(), m.end()))
    if [s for s, _ in starts] != sorted(s for s, _ in starts):
        return "the three parts are out of order (they must be Firstly, then Secondly, then Finally)"
    for (word, _), (_, end), (nxt, _) in zip(_PARTS[:2], starts[:2], starts[1:], strict=True):
        if len(re.findall(r"\w+", cot[end:nxt])) < _MIN_PART_WORDS:
            return f"the \"{word.capitalize()}\" sentence is too short"
    from sim4seg.metrics import diagnosis_correct, extract_labels

    if not diagnosis_correct(cot, diagnosis, subset, fmt="cot"):
        stated = extract_labels(cot, subset, fmt="cot")
        said = join_labels(stated, "and") if stated else "no diagnosis"
        return (f"the final sentence states {said} but the diagnosis is {join_labels(diagnosis, 'and')}; "
                f"end with \"Finally, the diagnosis is {join_labels(diagnosis, 'and')}.\"")
    return None


_VERDICT_PREFIX = re.compile(r"^(?:verdict|decision|answer|result)\s*[:\-]\s*", re.IGNORECASE)
_VERDICT = re.compile(r"^(ACCEPT|REJECT)(?:ED|S)?\b[\s*_`\"'.:;,)\]\-–—]*(.*)$", re.IGNORECASE)
_REASON_PREFIX = re.compile(r"^(?:reason|because)\s*[:\-]?\s*", re.IGNORECASE)


def parse_verdict(reply: str) -> tuple[bool, str]:
    """The critic's reply -> ``(accepted, reason)``. The verdict is the first word of the first non-blank line
    (markdown and a "Verdict:" prefix tolerated); anything else is a REJECT with reason "unparseable verdict"."""
    lines = [ln.strip() for ln in (reply or "").strip().splitlines() if ln.strip()]
    if not lines:
        return False, "unparseable verdict (empty reply)"
    first = re.sub(r"^[\s*_#>`\"'\-\[(]+", "", lines[0])
    first = _VERDICT_PREFIX.sub("", first).lstrip("*_`\"' ")
    m = _VERDICT.match(first)
    if m is None:
        return False, f"unparseable verdict: {lines[0][:120]!r}"
    reason = m.group(2).strip().rstrip("*_` ").strip() or " ".join(lines[1:]).strip()
    reason = _REASON_PREFIX.sub("", reason).strip()
    accepted = m.group(1).upper() == "ACCEPT"
    return accepted, reason or ("" if accepted else "no reason given")


# ----------------------------------------------------------------------------------------------------------
# Backends
# ----------------------------------------------------------------------------------------------------------


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


def png_bytes(image: np.ndarray, max_side: int | None = None) -> bytes:
    """RGB uint8 ``[H, W, 3]`` -> PNG bytes, downscaled so the longest side is at most ``max_side``."""
    import cv2

    h, w = image.shape[:2]
    if max_side and max(h, w) > max_side:
        s = max_side / max(h, w)
        image = cv2.resize(image, (max(1, round(w * s)), max(1, round(h * s))), interpolation=cv2.INTER_AREA)
    ok, buf = cv2.imencode(".png", np.ascontiguousarray(image[..., ::-1]))
    if not ok:
        raise RuntimeError("PNG encoding failed")
    return buf.tobytes()


def data_url(image: np.ndarray, max_side: int | None = MAX_IMAGE_SIDE) -> str:
    return "data:image/png;base64," + base64.b64encode(png_bytes(image, max_side)).decode("ascii")


def redact(spec: str) -> str:
    """A spec with any ``user:password@`` removed from its URL (what is written to the state file)."""
    return re.sub(r"(://)[^/@\s]+@", r"\1", spec)


class OpenAIBackend:
    """An OpenAI-compatible chat-completions endpoint (vLLM, ...), standard library only.

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
        import http.client

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
                detail = _one_line(e.read()[:300].decode("utf-8", "replace"))
                if e.code not in (408, 429, 500, 502, 503, 504) or last:
                    raise UserError(f"{shown}: HTTP {e.code} {e.reason}: {detail or 'no details'}") from None
            except urllib.error.URLError as e:
                if not isinstance(e.reason, TimeoutError) or last:
                    raise UserError(f"cannot reach {shown}: {_one_line(str(e.reason))} (is the server running and "
                                    "does the URL end with /v1?)") from None
            except TimeoutError:
                if last:
                    raise UserError(f"{shown}: no answer within {self.timeout:g} s (raise --timeout, or check the "
                                    "server)") from None
            except (OSError, http.client.HTTPException) as e:
                raise UserError(f"cannot reach {shown}: {type(e).__name__}: {_one_line(str(e))}") from None
            else:
                try:
                    return json.loads(raw)
                except json.JSONDecodeError:
                    raise UserError(f"{shown}: the server did not answer with JSON "
                                    f"({_one_line(raw[:120].decode('utf-8', 'replace'))!r})") from None
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
                            f"{_one_line(json.dumps(data)[:200])}") from None
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


class HFBackend:
    """A local transformers LLaVA-format model: ``LlavaForConditionalGeneration`` + its processor, loaded with
    ``local_files_only=True``. Batched generation with left padding; greedy unless ``temperature > 0``.

    The prompt uses the processor's chat template when it has one, else the LLaVA-v1 template. A processor saved
    without ``patch_size`` (only tokenizer + image processor in the folder) is completed from the model config.
    """

    def __init__(self, path: str | Path, max_new_tokens: int = 256, temperature: float = 0.0,
                 device: str | None = None, trust_remote_code: bool = False) -> None:
        import torch
        from transformers import LlavaForConditionalGeneration

        path = Path(path)
        if not (path / "config.json").is_file():
            raise UserError(f"hf backend: {path} is not a local transformers model folder (no config.json); "
                            "nothing is downloaded")
        if not device or device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        dtype = torch.float32
        if device.startswith("cuda"):
            dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        try:
            model = LlavaForConditionalGeneration.from_pretrained(
                path, dtype=dtype, local_files_only=True, trust_remote_code=trust_remote_code)
        except (OSError, ValueError) as e:
            raise UserError(f"hf backend: cannot load a LLaVA model from {path}: {_one_line(str(e))[:300]}"
                            + ("" if trust_remote_code else " (if it needs custom code, pass --trust-remote-code)")
                            ) from None
        self.model = model.to(device).eval()
        self.device = device
        self.processor = self._load_processor(path, trust_remote_code)
        self.tokenizer = self.processor.tokenizer
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token or self.tokenizer.unk_token
        self.max_new_tokens = max_new_tokens
        self.temperature = temperature
        template = getattr(self.processor, "chat_template", None) or getattr(self.tokenizer, "chat_template", None)
        self.use_chat_template = bool(template)

    def _load_processor(self, path: Path, trust_remote_code: bool) -> Any:
        from transformers import AutoImageProcessor, AutoProcessor, AutoTokenizer, LlavaProcessor

        try:
            proc = AutoProcessor.from_pretrained(path, local_files_only=True, trust_remote_code=trust_remote_code)
        except (OSError, ValueError, TypeError):
            proc = None
        if proc is None or not hasattr(proc, "image_processor") or not hasattr(proc, "tokenizer"):
            try:
                proc = LlavaProcessor(
                    image_processor=AutoImageProcessor.from_pretrained(path, local_files_only=True),
                    tokenizer=AutoTokenizer.from_pretrained(path, local_files_only=True,
                                                            trust_remote_code=trust_remote_code))
            except (OSError, ValueError) as e:
                raise UserError(f"hf backend: {path} lacks a usable tokenizer/image processor: "
                                f"{_one_line(str(e))[:300]}") from None
        cfg = self.model.config
        if getattr(proc, "patch_size", 1) is None:  # processor saved without the LLaVA fields: take the model's
            vision = cfg.vision_config
            proc.patch_size = vision.patch_size
            proc.vision_feature_select_strategy = cfg.vision_feature_select_strategy
            proc.num_additional_image_tokens = 1 if "clip" in str(vision.model_type) else 0
        return proc

    def _prompt(self, text: str) -> str:
        if self.use_chat_template:
            conv = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": text}]}]
            return self.processor.apply_chat_template(conv, add_generation_prompt=True, tokenize=False)
        return prompt_text(text)

    def generate(self, batch: list[ChatRequest]) -> list[str]:
        import torch
        from PIL import Image

        if not batch:
            return []
        images = [Image.fromarray(r.image if r.image is not None else np.zeros((8, 8, 3), np.uint8)) for r in batch]
        texts = [self._prompt(r.text) for r in batch]
        inputs = self.processor(images=images, text=texts, return_tensors="pt", padding=True)
        inputs = {k: (v.to(self.device) if hasattr(v, "to") else v) for k, v in inputs.items()}
        if "pixel_values" in inputs:
            inputs["pixel_values"] = inputs["pixel_values"].to(self.model.dtype)
        kwargs: dict[str, Any] = {"max_new_tokens": self.max_new_tokens, "pad_token_id": self.tokenizer.pad_token_id}
        if self.temperature > 0:
            kwargs.update(do_sample=True, temperature=self.temperature)
        else:
            kwargs.update(do_sample=False)
        try:
            with torch.inference_mode():
                out = self.model.generate(**inputs, **kwargs)
        except ValueError as e:
            raise UserError(f"hf backend: generation failed: {_one_line(str(e))[:300]} (does the processor expand "
                            f"{IMAGE_TOKEN} to the model's number of image features?)") from None
        new = out[:, inputs["input_ids"].shape[1]:]
        return [t.strip() for t in self.tokenizer.batch_decode(new, skip_special_tokens=True)]


def make_backend(spec: str, max_new_tokens: int = 256, temperature: float = 0.0, timeout: float = 120.0,
                 device: str | None = None, trust_remote_code: bool = False, concurrency: int = 8) -> Backend:
    """``hf:PATH`` or ``openai:URL[#model]`` -> a :class:`Backend`."""
    kind, sep, rest = spec.partition(":")
    if not sep or not rest:
        raise UserError(f"backend spec {redact(spec)!r}: use hf:/path/to/llava-dir or openai:http://host:port/v1#model")
    if kind == "hf":
        return HFBackend(rest, max_new_tokens, temperature, device, trust_remote_code)
    if kind == "openai":
        url, _, model = rest.partition("#")
        return OpenAIBackend(url, model or None, max_new_tokens, temperature, timeout, concurrency)
    raise UserError(f"backend spec {redact(spec)!r}: unknown kind {kind!r} (hf or openai)")


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


# ----------------------------------------------------------------------------------------------------------
# Files: records.jsonl rewritten in place (atomically), and the cot_state.jsonl sidecar
# ----------------------------------------------------------------------------------------------------------


def atomic_write(path: Path, text: str, errors: str = "strict") -> None:
    """Write ``text`` to ``path`` via a temp file in the same folder, fsync, then ``os.replace``."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "w", encoding="utf-8", errors=errors) as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    try:
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass


def _stamp(path: Path) -> tuple[int, int, int]:
    st = path.stat()
    return st.st_ino, st.st_size, st.st_mtime_ns


class RecordsFile:
    """``root/records.jsonl`` held as its lines; :meth:`set_cot` edits one line's ``cot`` (every other field and
    every other line, malformed ones included, is kept byte for byte) and :meth:`save` replaces the file
    atomically, refusing if someone else changed it since it was read."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.path = self.root / RECORDS
        if not self.path.exists():
            raise UserError(f"{self.path} not found: a dataset folder needs records.jsonl "
                            "(build one with `sim4seg data synth` or `sim4seg data convert`)")
        self._stamp = _stamp(self.path)
        # split on "\n" only (str.splitlines would also split inside strings holding U+2028 and the like);
        # surrogateescape keeps undecodable bytes as they are
        text = self.path.read_text(encoding="utf-8", errors="surrogateescape")
        self.lines = text.split("\n")
        if self.lines and self.lines[-1] == "":
            self.lines.pop()
        self.records: list[tuple[int, Record]] = []
        self.errors: list[RecordError] = []
        self.by_id: dict[str, int] = {}  # id -> index into self.records (first occurrence)
        self.duplicates: list[tuple[int, Record]] = []
        for i, line in enumerate(self.lines):
            if not line.strip():
                continue
            try:
                rec = parse_record(line, f"{self.path}:{i + 1}")
            except RecordError as e:
                self.errors.append(e)
                continue
            if rec.id in self.by_id:
                self.duplicates.append((i, rec))
                continue
            self.by_id[rec.id] = len(self.records)
            self.records.append((i, rec))
        self.dirty = False

    def get(self, rid: str) -> Record | None:
        k = self.by_id.get(rid)
        return None if k is None else self.records[k][1]

    def set_cot(self, rid: str, cot: str | None) -> None:
        line_no, rec = self.records[self.by_id[rid]]
        d = json.loads(self.lines[line_no])
        d["cot"] = cot
        self.lines[line_no] = json.dumps(d, ensure_ascii=False)
        rec.cot = cot
        self.dirty = True

    def save(self) -> None:
        if not self.dirty:
            return
        if _stamp(self.path) != self._stamp:
            raise UserError(f"{self.path} was changed by another program while this one ran; nothing was "
                            "overwritten: rerun to resume")
        atomic_write(self.path, "".join(line + "\n" for line in self.lines), errors="surrogateescape")
        self._stamp = _stamp(self.path)
        self.dirty = False


class CotState:
    """``root/cot_state.jsonl``: one JSON object per record (id, status, rounds, attempts, human decisions)."""

    def __init__(self, root: str | Path) -> None:
        self.path = Path(root) / STATE
        self.entries: dict[str, dict] = {}
        if self.path.exists():
            for i, line in enumerate(self.path.read_text(encoding="utf-8", errors="replace").split("\n"), 1):
                if not line.strip():
                    continue
                try:
                    d = json.loads(line)
                    self.entries[str(d["id"])] = d
                except (json.JSONDecodeError, KeyError, TypeError):
                    print(f"warning: {self.path}:{i}: unreadable state line ignored", file=sys.stderr)

    def get(self, rid: str) -> dict | None:
        return self.entries.get(rid)

    def put(self, entry: dict) -> None:
        """Store ``entry`` for its id; human decisions of the previous entry are carried over."""
        old = self.entries.get(entry["id"])
        if old is not None and old is not entry and old.get("human") and "human" not in entry:
            entry["human"] = old["human"]
        entry["updated"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
        self.entries[entry["id"]] = entry

    def save(self) -> None:
        atomic_write(self.path, "".join(json.dumps(e, ensure_ascii=False) + "\n" for e in self.entries.values()))


def candidate_cot(rec: Record, entry: dict | None) -> str | None:
    """The CoT a human reviews: the last machine attempt for records awaiting review (or rejected), else the
    record's own ``cot``."""
    attempts = (entry or {}).get("attempts") or []
    if entry and entry.get("status") in ("needs_review", "rejected") and attempts:
        return attempts[-1].get("cot")
    return rec.cot if rec.cot else (attempts[-1].get("cot") if attempts else None)


# ----------------------------------------------------------------------------------------------------------
# The loop
# ----------------------------------------------------------------------------------------------------------


@dataclass
class CotSummary:
    accepted: int = 0
    needs_review: int = 0
    failed: int = 0
    skipped: int = 0  # already had a CoT
    awaiting_review: int = 0  # needs_review from an earlier run, not retried
    state_path: str = ""
    ids: dict[str, list[str]] = field(default_factory=lambda: {"accepted": [], "needs_review": [], "failed": []})

    def line(self) -> str:
        s = (f"cot: {self.accepted} accepted, {self.needs_review} need review, {self.failed} failed; skipped "
             f"{self.skipped} with a CoT already and {self.awaiting_review} awaiting human review; "
             f"history in {self.state_path}")
        return s


@dataclass
class _Item:
    rec: Record
    subset: Subset
    image: np.ndarray
    attempts: list[dict] = field(default_factory=list)
    accepted: bool = False

    @property
    def feedback(self) -> tuple[str | None, str | None]:
        if not self.attempts:
            return None, None
        last = self.attempts[-1]
        return last.get("reason"), last.get("cot")


def _as_backend(b: Backend | str, options: dict) -> Backend:
    return make_backend(b, **options) if isinstance(b, str) else b


def generate_cots(data: str | Path, assistant: Backend | str, critic: Backend | str, max_rounds: int,
                  batch_size: int = 8, limit: int | None = None, overwrite: bool = False, retry_review: bool = False,
                  progress: bool = True, backend_options: dict | None = None) -> CotSummary:
    """Run the pipeline over ``data/records.jsonl`` (module docstring); backends may be objects or SPEC strings
    (built only when some record needs work; the same spec twice shares one model)."""
    from tqdm import tqdm

    from sim4seg.data.io import load_image

    if max_rounds < 1:
        raise UserError(f"--max-rounds must be at least 1, got {max_rounds}")
    if batch_size < 1:
        raise UserError(f"--batch-size must be at least 1, got {batch_size}")
    if limit is not None and limit < 0:
        raise UserError(f"--limit must not be negative, got {limit}")
    root = Path(data)
    records = RecordsFile(root)
    vocab = load_vocabulary(root)
    state = CotState(root)
    summary = CotSummary(state_path=str(state.path))
    specs = {"assistant": redact(assistant) if isinstance(assistant, str) else type(assistant).__name__,
             "critic": redact(critic) if isinstance(critic, str) else type(critic).__name__}

    for e in records.errors:
        print(f"skipped: {e}", file=sys.stderr)
        summary.failed += 1
    for line_no, rec in records.duplicates:
        print(f"skipped: {records.path}:{line_no + 1}: duplicate id {rec.id!r} (its first line is processed)",
              file=sys.stderr)
        summary.failed += 1

    def fail(rec: Record, reason: str) -> None:
        tqdm.write(f"failed: record {rec.id!r}: {reason}", file=sys.stderr)
        state.put({"id": rec.id, "status": "failed", "reason": reason, "rounds": 0, "attempts": [], **specs})
        summary.failed += 1
        summary.ids["failed"].append(rec.id)

    pending: list[tuple[Record, Subset]] = []
    for _, rec in records.records:
        entry = state.get(rec.id)
        if not overwrite:
            if rec.cot:
                summary.skipped += 1
                continue
            if entry and entry.get("status") == "needs_review" and not retry_review:
                summary.awaiting_review += 1
                continue
        if limit is not None and len(pending) >= limit:
            break
        subset = vocab.get(rec.subset)
        if subset is None:
            fail(rec, f"unknown subset {rec.subset!r}; declare it in {root / 'subsets.json'}")
            continue
        bad = [x for x in rec.diagnosis if x not in subset.labels]
        if not rec.diagnosis or bad:
            fail(rec, f"diagnosis {rec.diagnosis} is not a list of {rec.subset} labels {list(subset.labels)}")
            continue
        pending.append((rec, subset))

    if not pending:
        if summary.ids["failed"]:
            state.save()
        return summary

    options = backend_options or {}
    asst = _as_backend(assistant, options)
    crit = asst if isinstance(critic, str) and critic == assistant else _as_backend(critic, options)

    with tqdm(total=len(pending), desc="cot", unit="rec", disable=not progress) as bar:
        for start in range(0, len(pending), batch_size):
            items: list[_Item] = []
            for rec, subset in pending[start:start + batch_size]:
                try:
                    image = load_image(resolve_path(root, rec.image, rec.id, "image"))
                except RecordError as e:
                    fail(rec, str(e))
                    continue
                items.append(_Item(rec, subset, image))
            _run_rounds(items, asst, crit, max_rounds)
            for it in items:
                status = "accepted" if it.accepted else "needs_review"
                state.put({"id": it.rec.id, "status": status, "rounds": len(it.attempts), "attempts": it.attempts,
                           **specs})
                if it.accepted:
                    records.set_cot(it.rec.id, it.attempts[-1]["cot"])
                    summary.accepted += 1
                else:
                    summary.needs_review += 1
                summary.ids[status].append(it.rec.id)
            records.save()  # records first: a crash in between leaves an accepted CoT that a rerun skips
            state.save()
            bar.update(len(pending[start:start + batch_size]))
    return summary


def _run_rounds(items: list[_Item], assistant: Backend, critic: Backend, max_rounds: int) -> None:
    active = list(items)
    for rnd in range(1, max_rounds + 1):
        if not active:
            break
        reqs = []
        for it in active:
            reason, previous = it.feedback
            reqs.append(ChatRequest(assistant_prompt(it.rec, it.subset, reason, previous), it.image, it.rec.id))
        replies = _checked(assistant.generate(reqs), len(reqs), "assistant")
        to_critic: list[tuple[_Item, dict]] = []
        for it, reply in zip(active, replies, strict=True):
            cot = clean_cot(reply)
            attempt: dict[str, Any] = {"round": rnd, "cot": cot}
            if cot != reply.strip():
                attempt["raw"] = reply
            gate = check_cot(cot, it.rec.diagnosis, it.subset)
            if gate is not None:
                attempt.update(by="gate", verdict="REJECT", reason=gate)
            else:
                to_critic.append((it, attempt))
            it.attempts.append(attempt)
        if to_critic:
            creqs = [ChatRequest(critic_prompt(it.rec, it.subset, a["cot"]), it.image, it.rec.id)
                     for it, a in to_critic]
            verdicts = _checked(critic.generate(creqs), len(creqs), "critic")
            for (it, attempt), reply in zip(to_critic, verdicts, strict=True):
                ok, reason = parse_verdict(reply)
                attempt.update(by="critic", verdict="ACCEPT" if ok else "REJECT", reason=reason,
                               critic_reply=reply)
                it.accepted = ok
        active = [it for it in active if not it.accepted]


def _checked(replies: Iterable[str], n: int, who: str) -> list[str]:
    replies = list(replies)
    if len(replies) != n:
        raise RuntimeError(f"the {who} backend returned {len(replies)} replies for {n} requests")
    return [r if isinstance(r, str) else "" for r in replies]
