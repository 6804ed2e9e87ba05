"""``sim4seg data cot``: fill the ``cot`` field of a dataset with the paper's multi-role pipeline (Section 2.2,
Fig. 3), and ``sim4seg data review``: the human-assisted review after it.

For each record without a CoT (:mod:`.pipeline`):

1. The **medical assistant** (HuatuoGPT-Vision in the paper) gets the image, the record's question and the KNOWN
   diagnosis in a structured prompt asking for modality -> image analysis -> diagnosis, as three sentences
   "Firstly, ... Secondly, ... Finally, the diagnosis is <label>." (:mod:`.gate`).
2. A **rule gate** (:func:`~.gate.check_cot`) checks the three parts and that the CoT ends in the known diagnosis
   (the accuracy rule of :func:`sim4seg.metrics.diagnosis_correct`); a failure is a rejection with the gate's
   reason, and the critic is not asked.
3. The **critic assistant** answers ACCEPT or REJECT with a reason (:func:`~.gate.parse_verdict`).
4. A rejection (gate or critic) is fed back into the next attempt's prompt. After ``max_rounds`` attempts the
   record is marked ``needs_review``; ``sim4seg data review export|import`` is the human review (:mod:`.review`).

Only accepted CoTs are written to ``records.jsonl`` (so training never sees an unreviewed one). The per-record
history (attempts, verdicts, reasons, rounds, status ``accepted | needs_review | rejected | failed``) lives in the
sidecar ``cot_state.jsonl`` (:mod:`.store`). Both files are rewritten atomically after every batch, so a crash
loses at most the batch in flight; a rerun skips records that already have a CoT.

Backends answer :class:`~.chat.ChatRequest` batches and are chosen by a SPEC string (:mod:`.backends`):
``hf:DIR`` (a local LLaVA- or Qwen2.5-VL-format transformers model, :mod:`.hf_backend`) or
``openai:URL#model`` (an OpenAI-compatible endpoint such as vLLM, :mod:`.openai_backend`).
"""

from sim4seg.data.cot.backends import make_backend
from sim4seg.data.cot.chat import Backend, ChatRequest
from sim4seg.data.cot.pipeline import CotSummary, generate_cots
from sim4seg.data.cot.review import ImportSummary, export_review, import_review

__all__ = ["Backend", "ChatRequest", "CotSummary", "ImportSummary", "export_review", "generate_cots",
           "import_review", "make_backend"]
