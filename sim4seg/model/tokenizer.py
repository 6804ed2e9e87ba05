"""The offline tokenizer of the tiny and demo presets: a byte-level BPE trained deterministically on a fixed
clinical text, with a plain chat template (``model.prompt_format=chat_template``), so no file has to be
downloaded or committed. Words it has not seen still encode (byte level), only in more tokens."""

from __future__ import annotations

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from sim4seg.model.tokens import IMAGE_TOKEN, SEG_TOKEN

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


def _corpus() -> list[str]:
    text = list(_CORPUS)
    text += [f"{w} {w.capitalize()} {w.upper()}" for w in " ".join(text).split()]
    text += [chr(c) for c in range(32, 127)]
    return text


def build_tiny_tokenizer(vocab_size: int = 1024) -> PreTrainedTokenizerFast:
    """Train the BPE (deterministic for a given corpus), add ``<image>`` and ``[SEG]`` as special tokens and set
    the chat template."""
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIALS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(_corpus(), trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>",
                                   pad_token="<pad>", chat_template=CHAT_TEMPLATE)
    fast.add_special_tokens({"additional_special_tokens": [IMAGE_TOKEN, SEG_TOKEN]})
    return fast
