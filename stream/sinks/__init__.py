"""Outputs as sinks: every processed frame fans out, in order, to each output behind one small
interface, so adding an output (a recorder, metrics) does not grow the pipeline, and a slow
output can only drop its own frames.

A sink's :meth:`Sink.send` is awaited on the event loop for every result, in the pipeline's
order of sinks (the ZeroMQ bridge first, so what comes after it sees the mask as sent). It must
return at once: work that takes time (JPEG encoding, video writing) goes to the sink's own
bounded queue and thread, and what does not fit is dropped there and counted in
:meth:`Sink.drops`. The one exception is the bridge in lossless mode, whose waiting *is* the
back-pressure the user asked for. ``close`` is idempotent; ``aborted`` (a forced stop) tells a
sink not to flush.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol

from decision_bridge.schema import MaskHeader
from stream.frame import Frame
from stream.stages import Encoded


@dataclass(frozen=True, slots=True)
class Result:
    """One processed frame, as every output sees it."""

    frame: Frame
    header: MaskHeader  # what the bridge publishes (seq, timings, validity, IoU)
    encoded: Encoded  # the full-size mask (encoded.item.mask), the encoded payload, drivable space


class Sink(Protocol):
    name: str  # drops are reported as "<name>:<cause>"

    async def send(self, result: Result) -> None:
        """Take one result; return at once (see the module docstring)."""

    def drops(self) -> Mapping[str, int]:
        """Results this sink dropped so far, by cause."""

    async def close(self, *, aborted: bool = False) -> None:
        """Flush (unless ``aborted``) and release; idempotent."""


async def off_loop(name: str, fn: Callable[..., Any], *args: Any) -> Any:
    """``fn(*args)`` on a thread of its own that ends with the call (a sink's blocking close): nothing
    is left behind in asyncio's default pool, and the loop goes on meanwhile."""
    with ThreadPoolExecutor(1, thread_name_prefix=name) as pool:
        return await asyncio.get_running_loop().run_in_executor(pool, fn, *args)
