"""Evaluation metrics: segmentation counting and scores (:mod:`.segmentation`) and diagnosis accuracy
(:mod:`.diagnosis`, word lists in :mod:`.lexicon`). The two share nothing; import either from here.
Beyond the paper: no-finding answers (:mod:`.negatives`), several findings per image (:mod:`.targets`) and
whether RVLS2M's cells land on the target (:mod:`.region`)."""

from sim4seg.metrics.diagnosis import (
    DIAGNOSIS_FORMATS,
    DIAGNOSIS_RULE_VERSION,
    LabelMatch,
    canonical_label,
    diagnosis_correct,
    diagnosis_span,
    extract_labels,
    label_matches,
    normalize_answer,
    normalize_text,
)
from sim4seg.metrics.negatives import (
    NEGATIVE_KEYS,
    gives_mask,
    grading_vocabulary,
    n_seg,
    negative_scores,
    vote_gives_mask,
)
from sim4seg.metrics.region import REGION_KEYS, cells_in_image, region_diagnostics, summarize_regions
from sim4seg.metrics.segmentation import (
    SEG_SCORE_KEYS,
    SegmentationMeter,
    mask_counts,
    segmentation_counts,
    segmentation_scores,
)
from sim4seg.metrics.targets import TargetPair, match_targets, pair_counts, score_targets, seg_labels

__all__ = [
    "DIAGNOSIS_FORMATS", "DIAGNOSIS_RULE_VERSION", "NEGATIVE_KEYS", "REGION_KEYS", "SEG_SCORE_KEYS", "LabelMatch",
    "SegmentationMeter", "TargetPair", "canonical_label", "cells_in_image", "diagnosis_correct", "diagnosis_span",
    "extract_labels", "gives_mask", "grading_vocabulary", "label_matches", "mask_counts", "match_targets", "n_seg",
    "negative_scores", "normalize_answer", "normalize_text", "pair_counts", "region_diagnostics", "score_targets",
    "seg_labels", "segmentation_counts", "segmentation_scores", "summarize_regions", "vote_gives_mask",
]
