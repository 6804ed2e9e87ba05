"""Golden token ids and labels from LISA's own pipeline, for the ``lisa_v1`` prompt format's parity test.

LISA (dvlab-research/LISA) builds a training sample as the llava_v1 conversation
``SYSTEM + " USER: <image>\\n{query} ASSISTANT: {answer}</s>"``, replaces ``<image>`` by
``<im_start><image><im_end>``, tokenises it with ``tokenizer_image_token`` (model/llava/mm_utils.py) on
transformers 4.31's slow ``LlamaTokenizer`` and masks the labels as ``collate_fn`` (utils/dataset.py) does; a
generation prompt ends with ``ASSISTANT:`` (chat.py). This script re-implements those steps (LISA's code is not
vendored) and runs them under transformers 4.31.0 on a tokenizer folder in LISA-7B-v1's release layout:
a LLaMA-style sentencepiece model trained here, deterministically, on ``CORPUS`` (BPE, byte fallback, dummy
prefix, identity normalisation, whitespace kept), and ``<im_patch>``, ``<im_start>``, ``<im_end>``, ``[SEG]``
added right after the base vocabulary as in LISA-7B-v1's ``added_tokens.json`` (32000-32003 there).

Run it in a throwaway virtual environment (tokenizers only, no torch; installs in seconds)::

    python -m venv /tmp/lisa431 && /tmp/lisa431/bin/pip install transformers==4.31.0 sentencepiece protobuf "numpy<2"
    /tmp/lisa431/bin/python scripts/lisa_golden_ids.py            # writes tests/fixtures/lisa_golden_ids.json

``tests/test_lisa_parity.py`` imports :func:`write_lisa_tokenizer` from here (same model, same files), loads the
folder as ``sim4seg convert-lisa`` does and requires the ``lisa_v1`` Processor to give exactly these ids and labels.
"""

from __future__ import annotations

import hashlib
import io
import json
import sys
import tempfile
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "lisa_golden_ids.json"

SYSTEM = ("A chat between a curious human and an artificial intelligence assistant. "
          "The assistant gives helpful, detailed, and polite answers to the human's questions.")
IMAGE, IM_START, IM_END, IM_PATCH, SEG = "<image>", "<im_start>", "<im_end>", "<im_patch>", "[SEG]"
IMAGE_TOKEN_INDEX, IGNORE_INDEX = -200, -100  # model/llava/constants.py

# The sentencepiece training text: LISA's chat, clinical queries and the three answer formats.
CORPUS = (
    SYSTEM,
    "USER: ASSISTANT: USER: ASSISTANT:",
    "Could you help me identify the skin lesion in the skin dermoscopic image? Is the skin lesion benign or malignant?",
    "Please segment the tumor in this breast ultrasound image. What is the diagnosis: benign, malignant or normal?",
    "Where is the fracture in this x-ray image? Please output the segmentation mask.",
    "Can you locate the polyp in the colon shown in this endoscopy image? What does it show?",
    "Identify and segment the retinal vessels visible in this fundus image of the retina.",
    "Please find the abnormality in this image and mark it. Which diagnosis fits best: effusion or nodule?",
    "It is [SEG]. Sure, [SEG]. Sure, it is [SEG]. Sure, the segmentation result is [SEG].",
    "It is [SEG]. The diagnosis is benign. The diagnosis is malignant. The diagnosis is melanoma.",
    "Firstly, the modality of this image is ultrasound. Secondly, the image analysis shows a dark oval region "
    "with smooth borders, homogeneous echo and posterior shadowing. Finally, the diagnosis is benign.",
    "Firstly, the modality of this image is dermoscopy. Secondly, the image analysis shows an irregular lesion "
    "with a star-shaped pattern and speckled texture. Finally, the diagnosis is malignant.",
    "The thyroid nodule measures 12 mm; the wrist fracture is 3 cm long.",
    "Glaucoma, diabetic retinopathy and age-related macular degeneration affect the retina.",
)
# LLaMA's trainer settings where they matter for tokenisation; one thread keeps the model bytes deterministic.
TRAINER = dict(model_type="bpe", vocab_size=700, hard_vocab_limit=False, byte_fallback=True, add_dummy_prefix=True,
               normalization_rule_name="identity", remove_extra_whitespaces=False, split_digits=True,
               allow_whitespace_only_pieces=True, character_coverage=1.0, max_sentencepiece_length=16,
               unk_id=0, bos_id=1, eos_id=2, pad_id=-1, num_threads=1, minloglevel=2)

# (name, query, answer or None for a generation prompt)
CASES = (
    ("seg", "Could you help me identify the skin lesion in the skin dermoscopic image? Is the skin lesion benign "
            "or malignant?", "It is [SEG]."),
    ("seg_first", "Please segment the tumor in this breast ultrasound image.", "[SEG]."),
    ("seg_sure", "Where is the fracture in this x-ray image? Please output the segmentation mask.",
     "Sure, the segmentation result is [SEG]."),
    ("diagnosis", "Please segment the tumor in this breast ultrasound image. What is the diagnosis: benign, "
                  "malignant or normal?", "It is [SEG]. The diagnosis is benign."),
    ("diagnosis_two_labels", "Please find the abnormality in this image and mark it. Which diagnosis fits best: "
                             "effusion or nodule?", "It is [SEG]. The diagnosis is effusion and nodule."),
    ("cot", "Can you locate the polyp in the colon shown in this endoscopy image? What does it show?",
     "It is [SEG]. Firstly, the modality of this image is endoscopy. Secondly, the image analysis shows a round "
     "region with smooth borders. Finally, the diagnosis is polyp."),
    ("cot_whitespace", "Identify and segment the retinal vessels visible in this fundus image of the retina.",
     "It is [SEG].  Firstly, the modality of this image is fundus.\nSecondly, the image analysis shows thin "
     "dark lines.\n\nFinally, the diagnosis is glaucoma."),
    ("several_seg", "Where is the fracture in this x-ray image? Please output the segmentation mask.",
     "It is [SEG], [SEG] and [SEG]."),
    ("adjacent_seg", "Please find the abnormality in this image and mark it.", "They are [SEG] [SEG][SEG]."),
    ("unseen_text", "Is the 12 mm Ödem naïve? Größe: 3cm", "It is [SEG]. The diagnosis is benign."),
    ("generate", "Could you help me identify the skin lesion in the skin dermoscopic image? Is the skin lesion "
                 "benign or malignant?", None),
    ("generate_short", "What is the diagnosis?", None),
)


def train_model() -> bytes:
    """The sentencepiece model (bytes) of ``CORPUS`` with ``TRAINER``'s settings."""
    import sentencepiece as spm

    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(CORPUS), model_writer=buf, **TRAINER)
    return buf.getvalue()


def write_lisa_tokenizer(folder: str | Path) -> int:
    """Write LISA-7B-v1's tokenizer files (tokenizer.model, tokenizer_config.json, special_tokens_map.json,
    added_tokens.json; no tokenizer.json) into ``folder``; returns the base vocabulary size V (the added tokens are
    ``<im_patch>`` V, ``<im_start>`` V+1, ``<im_end>`` V+2, ``[SEG]`` V+3)."""
    import sentencepiece as spm

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model = train_model()
    (folder / "tokenizer.model").write_bytes(model)
    base = spm.SentencePieceProcessor(model_proto=model).get_piece_size()

    def added(content: str) -> dict:
        return {"content": content, "lstrip": False, "normalized": True, "rstrip": False, "single_word": False}

    config = {"add_bos_token": True, "add_eos_token": False, "clean_up_tokenization_spaces": False,
              "model_max_length": 512, "pad_token": None, "padding_side": "right", "sp_model_kwargs": {},
              "tokenizer_class": "LlamaTokenizer"}
    config.update({k: {"__type": "AddedToken", **added(t)}
                   for k, t in (("bos_token", "<s>"), ("eos_token", "</s>"), ("unk_token", "<unk>"))})
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    special = {"bos_token": added("<s>"), "eos_token": added("</s>"), "pad_token": "<unk>", "unk_token": added("<unk>")}
    (folder / "special_tokens_map.json").write_text(json.dumps(special, indent=2) + "\n")
    # LLaVA adds <im_patch>, <im_start>, <im_end> with add_tokens(..., special_tokens=True), LISA then [SEG].
    ids = {t: base + i for i, t in enumerate((IM_PATCH, IM_START, IM_END, SEG))}
    (folder / "added_tokens.json").write_text(json.dumps(ids, indent=2) + "\n")
    return base


def conversation(query: str, answer: str | None) -> str:
    """llava_v1 (sep " ", sep2 "</s>", roles USER/ASSISTANT): "ROLE: message" + the alternating separator,
    or "ROLE:" for the empty message that asks for generation; then LISA's <im_start>/<im_end> wrap."""
    text, seps = SYSTEM + " ", (" ", "</s>")
    for i, (role, message) in enumerate((("USER", f"{IMAGE}\n{query}"), ("ASSISTANT", answer))):
        text += f"{role}: {message}{seps[i % 2]}" if message else f"{role}:"
    return text.replace(IMAGE, IM_START + IMAGE + IM_END)


def image_token_ids(tok, text: str) -> list[int]:
    """tokenizer_image_token: each text piece between <image> placeholders is tokenised on its own (each call
    starts with BOS); the first BOS is kept, the others dropped, and IMAGE_TOKEN_INDEX stands for each image."""
    pieces = [tok(piece).input_ids for piece in text.split(IMAGE)]
    ids = pieces[0][:1] if pieces[0] and pieces[0][0] == tok.bos_token_id else []
    drop = len(ids)
    for i, piece in enumerate(pieces):
        ids += ([IMAGE_TOKEN_INDEX] if i else []) + piece[drop:]
    return ids


def masked_labels(tok, text: str, ids: list[int]) -> list[int]:
    """collate_fn's targets: BOS and each round's instruction (up to "ASSISTANT: ", measured as its own
    tokenisation minus 2) are ignored, the rest of the round (answer and </s>) is kept, anything after ignored."""
    labels, sep = list(ids), " ASSISTANT: "
    labels[0] = IGNORE_INDEX
    cur = 1
    for rnd in text.split("</s>"):
        if rnd == "":
            break
        parts = rnd.split(sep)
        assert len(parts) == 2, (len(parts), rnd)  # as LISA asserts
        instruction = len(image_token_ids(tok, parts[0] + sep)) - 2
        for j in range(cur, min(cur + instruction, len(labels))):
            labels[j] = IGNORE_INDEX
        cur += len(image_token_ids(tok, rnd))
    for j in range(cur, len(labels)):
        labels[j] = IGNORE_INDEX
    assert cur == len(ids), (cur, len(ids))  # collate_fn's check (no padding here)
    return labels


def golden() -> dict:
    import sentencepiece
    import transformers
    from transformers import AutoTokenizer

    if transformers.__version__ != "4.31.0":
        sys.exit(f"run this under transformers==4.31.0 (LISA's pin), not {transformers.__version__}; see the docstring")
    with tempfile.TemporaryDirectory() as folder:
        base = write_lisa_tokenizer(folder)
        # LISA's train_ds.py: AutoTokenizer(use_fast=False), pad = unk.
        tok = AutoTokenizer.from_pretrained(folder, use_fast=False, padding_side="right")
        tok.pad_token = tok.unk_token
        if type(tok).__name__ != "LlamaTokenizer":
            sys.exit(f"expected transformers' slow LlamaTokenizer, got {type(tok).__name__}")
        cases = []
        for name, query, answer in CASES:
            text = conversation(query, answer)
            ids = image_token_ids(tok, text)
            labels = masked_labels(tok, text, ids) if answer is not None else [IGNORE_INDEX] * len(ids)
            cases.append({"name": name, "query": query, "answer": answer, "text": text,
                          "input_ids": ids, "labels": labels})
    return {"about": "written by scripts/lisa_golden_ids.py: LISA's tokenizer_image_token and collate_fn labels "
                     "under transformers 4.31's slow LlamaTokenizer",
            "transformers": transformers.__version__, "sentencepiece": sentencepiece.__version__,
            "tokenizer_model_sha256": hashlib.sha256(train_model()).hexdigest(), "base_vocab": base,
            "added_tokens": {t: base + i for i, t in enumerate((IM_PATCH, IM_START, IM_END, SEG))},
            "image_token_index": IMAGE_TOKEN_INDEX, "ignore_index": IGNORE_INDEX, "cases": cases}


def dump(data: dict) -> str:
    """JSON with one line per id list (small diffs, readable cases)."""
    lists = {}
    for i, case in enumerate(data["cases"]):
        for key in ("input_ids", "labels"):
            lists[f"@{i}{key}@"] = json.dumps(case[key])
            case[key] = f"@{i}{key}@"
    text = json.dumps(data, indent=1, ensure_ascii=False)
    for marker, ids in lists.items():
        text = text.replace(json.dumps(marker), ids)
    return text + "\n"


if __name__ == "__main__":
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else OUT
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(dump(golden()))
    print(f"wrote {out}")
