"""The tokens Sim4Seg adds to an LVLM's vocabulary, and the image placeholder of each LVLM family."""

IMAGE_TOKEN = "<image>"  # LLaVA: stands for the image in prompts; the Processor repeats its id once per image feature
QWEN_IMAGE_TOKEN = "<|image_pad|>"  # Qwen2.5-VL's placeholder (its chat template writes it between <|vision_*|>)
SEG_TOKEN = "[SEG]"  # the state that predicts it, through phi, prompts SAM for one mask
