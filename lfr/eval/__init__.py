"""Offline evaluation on datasets the user points at: pairs, embeddings, metrics, reports."""

from lfr.eval.dataset import EmbeddingSet, default_cache_dir, embed_images
from lfr.eval.metrics import (
    FAILED_SCORE,
    KFoldResult,
    RateAtThreshold,
    kfold_accuracy,
    tar_at_far,
    threshold_at_false_rate,
    tpir_at_fpir,
)
from lfr.eval.pairs import Pair, PairsError, parse_pairs
from lfr.eval.verify import VerifyReport, render_verify, run_verify

__all__ = [
    "FAILED_SCORE",
    "EmbeddingSet",
    "KFoldResult",
    "Pair",
    "PairsError",
    "RateAtThreshold",
    "VerifyReport",
    "default_cache_dir",
    "embed_images",
    "kfold_accuracy",
    "parse_pairs",
    "render_verify",
    "run_verify",
    "tar_at_far",
    "threshold_at_false_rate",
    "tpir_at_fpir",
]
