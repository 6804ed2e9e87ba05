"""The Sim4Seg model: LLaVA (transformers) + phi + RVLS2M + SAM (segment-anything)."""
