"""``sim4seg convert-lisa``: a released LISA checkpoint as a Sim4Seg model directory (see command.py).

Outside the model library on purpose (as transformers keeps its ``convert_*_to_hf.py`` scripts): the model never
imports it. names.py holds the one LISA -> Sim4Seg rename table, weights.py reads the release and writes shards,
release.py reads the rest of the release (config, tokenizer, CLIP tower, SAM variant), command.py runs it.
"""
