"""Sim4Seg: medical diagnosis segmentation with an LVLM, RVLS2M region prompts and SAM."""

__version__ = "0.1.0"
