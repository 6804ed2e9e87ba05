"""Evaluation metrics: segmentation counting and scores (:mod:`.segmentation`) and diagnosis accuracy
(:mod:`.diagnosis`, word lists in :mod:`.lexicon`). The two share nothing; import either from here."""

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
from sim4seg.metrics.segmentation import (
    SEG_SCORE_KEYS,
    SegmentationMeter,
    mask_counts,
    segmentation_counts,
    segmentation_scores,
)

__all__ = [
    "DIAGNOSIS_FORMATS", "DIAGNOSIS_RULE_VERSION", "SEG_SCORE_KEYS", "LabelMatch", "SegmentationMeter",
    "canonical_label", "diagnosis_correct", "diagnosis_span", "extract_labels", "label_matches", "mask_counts",
    "normalize_answer", "normalize_text", "segmentation_counts", "segmentation_scores",
]
