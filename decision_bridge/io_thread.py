"""The publisher's socket on a thread of its own, so no ZeroMQ call ever runs on the event loop.

Everything the pipeline asks of the socket (send a message, count subscribers, close) goes
through :class:`PublisherThread`, which owns the :class:`~decision_bridge.publisher.MaskPublisher`
after :meth:`PublisherThread.start`. Between requests the thread reads subscription messages,
``MAX_SUBSCRIPTIONS_PER_DRAIN`` at a time, so a peer flooding subscriptions costs this thread
some work and never stalls the loop (the publisher itself applies only subscriptions it can
serve). Requests wait in a bounded queue; the loop awaits a request's future only where it must
(lossless delivery, start-up), and a message that finds the queue full is dropped and counted.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from decision_bridge.publisher import MaskPublisher

REQUEST_QUEUE_DEPTH = 64
# Subscription messages read per turn of the thread (about 1 ms of work): a flood of them is drained
# quickly, so the ones ZeroMQ keeps queued for us until read do not pile up.
SUBSCRIPTIONS_PER_TURN = 512
IDLE_POLL_S = 0.05  # between requests: how often subscriptions are read (waking less often costs the GIL less)
RETRY_S = 0.001  # a lossless message refused for a full subscriber queue is tried again this soon


@dataclass
class _Request:
    action: Callable[[], Any]
    future: Future[Any] = field(default_factory=Future)
    retry_until_sent: bool = False  # lossless: repeat the send until it is accepted (or close)


class PublisherThread:
    """Owns ``publisher`` on a daemon thread; thread-safe to call from anywhere."""

    def __init__(self, publisher: MaskPublisher, *, depth: int = REQUEST_QUEUE_DEPTH) -> None:
        self.publisher = publisher
        self.dropped_queue = 0  # messages refused because the thread could not keep up
        self._requests: queue.Queue[_Request | None] = queue.Queue(maxsize=depth)
        self._thread = threading.Thread(target=self._run, name="zmq-publisher", daemon=True)
        self._stopping = threading.Event()
        self._closed = False

    def start(self) -> None:
        self._thread.start()

    # --- requests (any thread) ------------------------------------------------------------------------------------

    def send(self, parts: list[bytes], *, lossless: bool = False, count_drop: bool = True) -> Future[bool]:
        """Queue one message; the future says whether ZeroMQ accepted it (False at once when this
        thread's queue is full). ``lossless``: the thread retries until every subscriber's queue
        has room (or the publisher closes). ``count_drop=False``: a refusal is not a lost mask."""
        request = _Request(lambda: self.publisher.send(parts, count_drop=count_drop and not lossless),
                           retry_until_sent=lossless)
        try:
            self._requests.put_nowait(request)  # never blocks the caller: a full queue is an answer
        except queue.Full:
            self.dropped_queue += int(count_drop and not lossless)
            request.future.set_result(False)
        return request.future

    def call(self, fn: Callable[[], Any]) -> Future[Any]:
        """Run ``fn`` (which may use the socket) on the thread; its result in the future."""
        request = _Request(fn)
        self._requests.put(request)
        return request.future

    def close(self, linger_ms: int = 0) -> None:
        """Finish queued requests, close the socket (``linger_ms`` for what is still in flight) and
        join the thread. Blocking: call it off the event loop. Idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._thread.is_alive():
            self._requests.put(None)
            self._thread.join()
        self.publisher.close(linger_ms)

    # --- the thread -------------------------------------------------------------------------------------------------

    def _run(self) -> None:
        drained = True
        while True:
            try:  # with subscriptions still waiting (a flood), only look for requests between chunks
                request = self._requests.get(timeout=IDLE_POLL_S) if drained else self._requests.get_nowait()
            except queue.Empty:
                drained = self._read_subscriptions()
                continue
            if request is None:
                return
            self._serve(request)
            drained = self._read_subscriptions()

    def _serve(self, request: _Request) -> None:
        try:
            result = request.action()
            while request.retry_until_sent and result is False and not self._closed:
                self._read_subscriptions()  # a subscriber that leaves frees its queue: notice it
                time.sleep(RETRY_S)
                result = request.action()
        except Exception as exc:  # handed to whoever awaits the future
            request.future.set_exception(exc)
            return
        request.future.set_result(result)

    def _read_subscriptions(self) -> bool:
        """One chunk; True when none are left waiting."""
        try:
            return self.publisher.read_subscriptions(SUBSCRIPTIONS_PER_TURN)
        except Exception:  # a closed socket at shutdown: nothing left to read
            return True
