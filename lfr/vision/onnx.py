"""onnxruntime sessions tuned for a small shared machine."""

from __future__ import annotations

from pathlib import Path

import onnxruntime as ort

from lfr.vision.models import ModelError


def create_session(path: Path, threads: int = 1, providers: list[str] | None = None
                   ) -> ort.InferenceSession:
    """One session per model file. One intra-op thread beats two when cores are shared."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    try:
        return ort.InferenceSession(
            str(path), sess_options=options, providers=providers or ["CPUExecutionProvider"]
        )
    except Exception as exc:  # onnxruntime raises its own untyped errors
        raise ModelError(f"{path}: onnxruntime cannot load this model: {exc}") from exc
