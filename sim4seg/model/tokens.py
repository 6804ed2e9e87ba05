"""The two tokens Sim4Seg adds to an LVLM's vocabulary."""

IMAGE_TOKEN = "<image>"  # stands for the image in prompts; the Processor repeats its id once per image feature
SEG_TOKEN = "[SEG]"  # the state that predicts it, through phi, prompts SAM for one mask
