"""Progress of a long ``roadseg eval``: a tqdm bar on a terminal, plain lines anywhere else.

A bar redraws with carriage returns, which a log file or CI console shows as one line at the
end (or not at all: tqdm turns itself off without a terminal), so an eval of a few hundred
full-size frames on a CPU looked hung for many minutes. Without a terminal we print a line
every :data:`LINE_INTERVAL_S` instead: frames done / total, images/s and the time left.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any, TextIO

LINE_INTERVAL_S = 10.0  # a line this often: visible progress, yet a 500-frame eval stays ~100 lines


class LineProgress:
    """Writes ``eval: 12/500 frames (2%), 0.21 images/s, ETA 38m43s`` lines to ``stream``:
    after the first update, then at most every ``interval_s``, and always at the end."""

    def __init__(self, total: int, stream: TextIO, *, interval_s: float = LINE_INTERVAL_S,
                 clock: Callable[[], float] = time.monotonic, label: str = "eval") -> None:
        self.total, self.done = total, 0
        self._stream, self._interval_s, self._clock, self._label = stream, interval_s, clock, label
        self._start = clock()
        self._last_line: float | None = None

    def update(self, count: int) -> None:
        self.done += count
        self.total = max(self.total, self.done)  # a total that was an estimate (a video's declared length)
        now = self._clock()
        if self._last_line is None or now - self._last_line >= self._interval_s or self.done >= self.total:
            self._write(now)

    def close(self) -> None:
        if self.done < self.total and self._last_line is not None:
            self._write(self._clock())  # stopped early (an error): say how far it got

    def _write(self, now: float) -> None:
        self._last_line = now
        elapsed = now - self._start
        rate = self.done / elapsed if elapsed > 0 else float("nan")
        share = 100 * self.done // max(self.total, 1)
        eta = _duration((self.total - self.done) / rate) if rate > 0 else "?"
        print(f"{self._label}: {self.done}/{self.total} frames ({share}%), {rate:.2f} images/s, ETA {eta}",
              file=self._stream, flush=True)


def _duration(seconds: float) -> str:
    seconds = round(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


@contextlib.contextmanager
def progress(total: int, enabled: bool, stream: TextIO | None = None, *, label: str = "eval") -> Iterator[Any]:
    """An object with ``update(n)``, or None when ``enabled`` is false: a tqdm bar when
    ``stream`` (default stderr) is a terminal and tqdm is installed, else a :class:`LineProgress`;
    both named ``label``."""
    stream = stream or sys.stderr
    reporter: Any = None
    if enabled:
        reporter = _tqdm_bar(total, stream, label) if _is_terminal(stream) else None
        if reporter is None:
            reporter = LineProgress(total, stream, label=label)
    try:
        yield reporter
    finally:
        close = getattr(reporter, "close", None)
        if close is not None:
            close()


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # a closed or file-like stream without a terminal
        return False


def _tqdm_bar(total: int, stream: TextIO, label: str = "eval") -> Any:
    try:
        from tqdm import tqdm
    except ImportError:  # the bar is a nicety: fall back to lines
        return None
    return tqdm(total=total, desc=label, unit="img", file=stream, dynamic_ncols=True)
