"""Per-stream liveness: the state machine every source reports, and its snapshot.

States follow what an operator needs to tell apart: a camera we have not reached
yet (``connecting``), one delivering frames (``live``), one whose frames stopped
arriving or stopped changing (``stalled``), one we are re-opening after a loss
(``reconnecting``), a recording that finished (``ended``) and a stream that broke
for good (``failed``). A live camera is never ``failed``: it retries forever.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

NS_PER_MS = 1_000_000


class StreamState(StrEnum):
    CONNECTING = "connecting"
    LIVE = "live"
    STALLED = "stalled"
    RECONNECTING = "reconnecting"
    ENDED = "ended"
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class StreamHealth:
    """One stream's liveness at one moment (``now_ns`` on the monotonic clock)."""

    state: StreamState
    live: bool  # a camera (keep the newest frame) rather than a lossless replay
    reconnects: int  # successful re-opens after a loss
    last_frame_age_ms: float | None  # since the last new frame; None before the first

    def to_json(self) -> dict[str, object]:
        age = None if self.last_frame_age_ms is None else round(self.last_frame_age_ms, 1)
        return {"state": self.state.value, "live": self.live, "reconnects": self.reconnects,
                "last_frame_age_ms": age}


def frame_age_ms(last_frame_ns: int | None, now_ns: int) -> float | None:
    return None if last_frame_ns is None else (now_ns - last_frame_ns) / NS_PER_MS
