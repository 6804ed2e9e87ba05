"""The offline tokenizers of the random-init presets: a byte-level BPE trained deterministically on a fixed
clinical text, so no file has to be downloaded or committed. Words it has not seen still encode (byte level),
only in more tokens. ``tiny``/``demo`` (LLaVA): ``<s>``/``</s>`` and a plain chat template; ``tiny_qwen2_5_vl``:
Qwen2.5-VL's special tokens (``<|im_start|>``, ``<|image_pad|>``, ...) and its release's chat template."""

from __future__ import annotations

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from sim4seg.model.tokens import IMAGE_TOKEN, QWEN_IMAGE_TOKEN, SEG_TOKEN

SPECIALS = ["<unk>", "<s>", "</s>", "<pad>"]

# "USER: <image>\n{query}\nASSISTANT: {answer}</s>"; the generation prompt ends in "ASSISTANT:".
# (Newlines as {{ '\n' }}: transformers renders templates with trim_blocks, which drops one after a block tag.)
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}"
    "{% if m['role'] == 'user' %}USER: {% for c in m['content'] %}"
    "{% if c['type'] == 'image' %}" + IMAGE_TOKEN + "{{ '\\n' }}{% else %}{{ c['text'] }}{% endif %}{% endfor %}"
    "{{ '\\n' }}{% else %}ASSISTANT: {% for c in m['content'] %}{{ c['text'] }}{% endfor %}{{ eos_token }}"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)

# What the tiny models are asked and answer: chat roles, the three answer formats, and the M3DS vocabulary.
_CORPUS = (
    "USER: ASSISTANT:",
    "It is [SEG]. Sure, [SEG]. Sure, it is [SEG]. Sure, the segmentation result is [SEG]. The diagnosis is",
    "Firstly, the modality of this image is. Secondly, the image analysis shows a region with irregular margins, "
    "smooth borders, high intensity, low intensity, a bright line, a dark oval, a round blob, a star-shaped "
    "lesion, speckled texture, homogeneous echo, posterior shadowing. Finally, the diagnosis is",
    "Could you help me identify the finding in the image? Please segment the lesion in this image. Where is the "
    "tumor in this image? Please output the segmentation mask. Can you locate the polyp in the colon shown in "
    "this image? Identify and segment the nodule visible in this image of the thyroid. Please find the "
    "abnormality in this image and mark it.",
    "Is it benign or malignant? What is the diagnosis? What is your diagnosis among these? Which diagnosis fits "
    "best? Please also tell me whether it is normal. What does it show? Please also give the diagnosis. What "
    "finding is this?",
    "x-ray X-ray dermoscopy dermoscopic endoscopy endoscopic ultrasound fundus bone skin colon breast thyroid "
    "chest retina retinal vessels skin lesion thyroid nodule fracture fractured broken bone elbow finger fingers "
    "forearm humerus shoulder wrist positive benign malignant normal cancerous non-cancerous melanoma "
    "seborrheic seborrhoeic keratosis nevus naevus mole polyp polyps tumor atelectasis calcification "
    "cardiomegaly consolidation diffuse nodule effusion emphysema fibrosis mass pleural thickening pneumothorax "
    "age-related macular degeneration amd diabetic retinopathy dr glaucoma",
)


def _corpus(extra: tuple[str, ...] = ()) -> list[str]:
    text = list(_CORPUS) + list(extra)
    text += [f"{w} {w.capitalize()} {w.upper()}" for w in " ".join(text).split()]
    text += [chr(c) for c in range(32, 127)]
    return text


def _bpe(specials: list[str], vocab_size: int, unk: str | None, extra: tuple[str, ...] = ()) -> Tokenizer:
    """The byte-level BPE trained on the corpus (and ``extra`` lines; deterministic), ``specials`` first in its
    vocabulary."""
    tok = Tokenizer(models.BPE(unk_token=unk))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(_corpus(extra), trainer=trainer)
    return tok


def build_tiny_tokenizer(vocab_size: int = 1024) -> PreTrainedTokenizerFast:
    """Train the BPE (deterministic for a given corpus), add ``<image>`` and ``[SEG]`` as special tokens and set
    the chat template."""
    fast = PreTrainedTokenizerFast(tokenizer_object=_bpe(SPECIALS, vocab_size, "<unk>"), unk_token="<unk>",
                                   bos_token="<s>", eos_token="</s>", pad_token="<pad>", chat_template=CHAT_TEMPLATE)
    fast.add_special_tokens({"additional_special_tokens": [IMAGE_TOKEN, SEG_TOKEN]})
    return fast


# Qwen2.5-VL's special tokens (Qwen2TokenizerFast: no BOS, no UNK; the instruct releases end a turn, and
# generation, with <|im_end|>) and the chat template of its releases (chat_template.json of
# Qwen/Qwen2.5-VL-7B-Instruct), so the tiny preset is prompted exactly as the 7B one.
QWEN_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                 QWEN_IMAGE_TOKEN, "<|video_pad|>"]
QWEN_CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "{% endif %}<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}{{ message['content'] }}"
    "<|im_end|>\n{% else %}{% for content in message['content'] %}{% if content['type'] == 'image' or 'image' in "
    "content or 'image_url' in content %}{% set image_count.value = image_count.value + 1 %}{% if add_vision_id %}"
    "Picture {{ image_count.value }}: {% endif %}<|vision_start|><|image_pad|><|vision_end|>{% elif content['type'] "
    "== 'video' or 'video' in content %}{% set video_count.value = video_count.value + 1 %}{% if add_vision_id %}"
    "Video {{ video_count.value }}: {% endif %}<|vision_start|><|video_pad|><|vision_end|>{% elif 'text' in content "
    "%}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n{% endif %}{% endfor %}{% if add_generation_prompt "
    "%}<|im_start|>assistant\n{% endif %}"
)


def build_tiny_qwen_tokenizer(vocab_size: int = 1024) -> PreTrainedTokenizerFast:
    """The same BPE with Qwen2.5-VL's special tokens and chat template, and ``[SEG]``."""
    bpe = _bpe(QWEN_SPECIALS, vocab_size, None, ("system user assistant You are a helpful assistant.",))
    fast = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                   chat_template=QWEN_CHAT_TEMPLATE)
    fast.add_special_tokens({"additional_special_tokens": [SEG_TOKEN]})
    return fast
