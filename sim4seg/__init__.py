"""Sim4Seg: medical diagnosis segmentation with a LLaVA-style LVLM, RVLS2M region prompts and SAM."""

__version__ = "0.1.0"
