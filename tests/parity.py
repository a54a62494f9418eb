"""What every backend / precision parity test shares: the issue's bar and how pixels are counted."""

from __future__ import annotations

import numpy as np
import pytest
import torch

MIN_AGREEMENT = 0.995  # the bar: every backend and precision vs torch fp32, full frame resolution
needs_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def frame_agreement(masks: list[np.ndarray], reference: list[np.ndarray]) -> list[float]:
    """Per frame: the fraction of pixels equal to the reference mask (shapes must match)."""
    assert [m.shape for m in masks] == [r.shape for r in reference]
    return [float(np.mean(m == r)) for m, r in zip(masks, reference, strict=True)]


def pooled_agreement(masks: list[np.ndarray], reference: list[np.ndarray]) -> float:
    """Over all frames together: equal pixels / all pixels."""
    assert [m.shape for m in masks] == [r.shape for r in reference]
    same = sum(int((m == r).sum()) for m, r in zip(masks, reference, strict=True))
    return same / sum(r.size for r in reference)
