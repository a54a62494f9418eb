"""Inference-stage policies: the staleness budget for live frames, and batches whose
failure costs only the frames involved."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TypeAlias

import numpy as np

from models.backends.base import BackendTimings, InferenceBackend
from stream.accounting import Ledger
from stream.clock import Clock
from stream.frame import Frame

log = logging.getLogger(__name__)

DROP_CAUSE_STALE = "stale"
DROP_CAUSE_INFERENCE = "inference_error"
# Fast attack, slow decay: one slow batch raises the prediction at once, so a frame is not
# admitted on the strength of a few quick batches just before a slow one.
DECAY = 0.1
# Share of the budget kept for post-processing and publishing after the model.
PUBLISH_MARGIN = 0.05
# When the model alone takes most of the budget, admit frames up to this share of it
# anyway (their masks will be late and flagged) rather than starving the stream.
MIN_ADMIT_SHARE = 0.2
# Say the model is too slow for the budget only once it has been for this many frames, not
# on one hiccup (the first batch at a new frame size, a page-in).
WARN_AFTER_FRAMES = 25
# (frame, mask, finite, timings, road layer or None)
Success: TypeAlias = tuple[Frame, np.ndarray, bool, BackendTimings, np.ndarray | None]


class StalenessGate:
    """Drops live frames that cannot be published within ``max_age_ms`` of capture.

    A frame is admitted if its age now plus the predicted time from batch to publish
    (measured on every published frame) fits the budget,
    so published latency cannot creep however slow the model is; replay frames are
    never dropped (replay is lossless)."""

    def __init__(self, max_age_ms: float, clock: Clock) -> None:
        self._budget = max_age_ms
        self._clock = clock
        self.predicted_ms = 0.0
        self._over_budget = 0  # consecutive admissions with the prediction over the budget
        self._warned = False

    def observe(self, to_publish_ms: float) -> None:
        if to_publish_ms > self.predicted_ms:
            self.predicted_ms = to_publish_ms
        else:
            self.predicted_ms += DECAY * (to_publish_ms - self.predicted_ms)

    def admissible_age_ms(self) -> float:
        allowed = self._budget * (1 - PUBLISH_MARGIN) - self.predicted_ms
        floor = self._budget * MIN_ADMIT_SHARE
        if allowed >= floor:
            self._over_budget = 0
            return allowed
        self._over_budget += 1
        if self._over_budget >= WARN_AFTER_FRAMES and not self._warned:
            self._warned = True
            log.warning("the model takes %.0f ms per batch, too close to the %.0f ms staleness budget: "
                        "live masks will be late and marked invalid", self.predicted_ms, self._budget)
        return floor

    def admit(self, frames: Sequence[Frame], live: set[str], ledger: Ledger) -> list[Frame]:
        now_ns = self._clock.now_ns()
        limit_ms = self.admissible_age_ms()
        kept = []
        for frame in frames:
            if frame.source_id in live and (now_ns - frame.capture_ns) / 1e6 > limit_ms:
                ledger.drop(frame.source_id, DROP_CAUSE_STALE)
            else:
                kept.append(frame)
        return kept


class IsolatedInference:
    """Runs a batch on the inference thread; when the backend raises, each frame is retried
    alone so only the frames that really fail are lost (an 8000x8000 frame, a backend bug)."""

    def __init__(self, backend: InferenceBackend) -> None:
        self._backend = backend

    def infer(self, frames: Sequence[Frame]) -> tuple[list[Success], list[tuple[Frame, str]]]:
        try:
            out = self._backend.infer([frame.image for frame in frames])
        except Exception as exc:  # MemoryError included: a huge frame must not end the run
            if len(frames) == 1:
                return [], [(frames[0], f"{type(exc).__name__}: {exc}")]
            successes: list[Success] = []
            failures: list[tuple[Frame, str]] = []
            for frame in frames:
                ok, failed = self.infer([frame])
                successes += ok
                failures += failed
            return successes, failures
        roads = out.road or [None] * len(frames)  # only backends that provide the road layer fill it
        successes = [(frame, mask, valid, out.timings, road)
                     for frame, mask, valid, road in zip(frames, out.masks, out.valid, roads, strict=True)]
        return successes, []
