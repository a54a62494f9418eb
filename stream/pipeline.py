"""The pipeline runner: sources -> per-source queues -> batcher -> inference ->
post-processing -> sinks (ZeroMQ bridge, telemetry, viewer: :mod:`stream.sinks`).

Threads: one per source (decode; a live camera has its own reader), one for the
model (a daemon, so a stop during a long model load never waits for it), one for
post-processing (IoU, mask compression). The event loop only moves references and
sends already-encoded bytes.

Start-up checks everything cheap first (sources, void masks, addresses) so bad
input fails in well under a second, and only then loads the model. A stop is
honoured at every await, start-up included.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
from collections.abc import Awaitable, Callable
from concurrent.futures import Executor, ThreadPoolExecutor
from typing import Any, TypeVar

from decision_bridge.publisher import MaskPublisher
from decision_bridge.schema import Encoding
from models.backends.base import InferenceBackend
from stream.accounting import Ledger
from stream.batcher import AllStreamsEnded, Batcher
from stream.clock import MONOTONIC, Clock
from stream.config import PipelineConfig
from stream.daemon_executor import DaemonThreadExecutor
from stream.frame import Frame
from stream.geometry import StreamGeometry, frame_size_of
from stream.health import StreamState
from stream.inference import DROP_CAUSE_INFERENCE, IsolatedInference, StalenessGate
from stream.metrics import PipelineMetrics
from stream.queues import DROP_CAUSE_QUEUE_FULL, BoundedQueue, DropPolicy, QueueClosed
from stream.sinks import Result
from stream.sinks.bridge import BridgeSink
from stream.sinks.setup import Outputs, RunHooks, open_outputs
from stream.sources import EndOfStream, FrameSource, SourceOptions, open_source, split_source_name
from stream.sources.live import DROP_CAUSE_SUPERSEDED
from stream.stages import Encoded, Inferred, encode_result, make_header, validity
from stream.telemetry import Telemetry
from stream.void_mask import parse_void_masks
from web_viewer.segmentation import ModelNotReady, Segmented, segment_one

log = logging.getLogger(__name__)
T = TypeVar("T")
BackendFactory = Callable[[], InferenceBackend]
DROP_CAUSE_SHUTDOWN = "shutdown"  # read, then the stop came before it could be queued
DROP_CAUSE_ABORTED = "aborted"  # queued when a forced stop (second Ctrl-C) came
FAILURE_LOG_EVERY = 100  # a backend failing on every frame logs once, then every this many


class PipelineError(ValueError):
    """The pipeline cannot start with this configuration; the message says why."""


class Stopped(Exception):
    """stop() came during start-up."""


class Pipeline:
    def __init__(self, config: PipelineConfig, backend_factory: BackendFactory, clock: Clock = MONOTONIC):
        self.config = config
        self.telemetry = Telemetry()
        self.metrics = PipelineMetrics(self.stream_status)  # served by the viewer at /metrics
        self.ledger = Ledger()
        self._backend_factory = backend_factory
        self._clock = clock
        self._encoding = Encoding(config.mask_encoding)
        self._void_masks = parse_void_masks(config.void_masks)
        self._geometry = StreamGeometry(config.cameras, config.bev_grid, self._void_masks, config.device)
        self._infer_pool = DaemonThreadExecutor("infer")
        self._post_pool = ThreadPoolExecutor(1, thread_name_prefix="post")
        self._decode_pool = ThreadPoolExecutor(config.decode_threads or os.cpu_count() or 1,
                                               thread_name_prefix="decode")
        self._backend: InferenceBackend | None = None
        self._sources: list[FrameSource] = []
        self._queues: list[BoundedQueue[Frame]] = []
        self._streams: dict[str, tuple[FrameSource, BoundedQueue[Frame]]] = {}  # by stream id
        self._results: BoundedQueue[Inferred] = BoundedQueue("results", config.result_depth, DropPolicy.BLOCK)
        self.run_id = secrets.token_hex(8)  # in every message: subscribers tell a restart from a gap
        self._outputs = Outputs()  # the sinks every result goes to, opened before the model loads
        self._bridge: BridgeSink | None = None
        self._pumps: list[asyncio.Task[None]] = []
        self._workers: list[asyncio.Task[None]] = []
        self._stop_event = asyncio.Event()
        self._stop_requested = False
        self._aborted = False
        self._model_ready = False
        self._gate: StalenessGate | None = None
        # In-process observers of every published frame (benchmarks, tests): called on the loop
        # right after the ZeroMQ send with (frame, header, publish_ns); they must be cheap.
        self.observers: list[Callable[[Frame, Any, int], None]] = []
        self.viewer_port: int | None = None
        self.zmq_address: str | None = None

    @property
    def publisher(self) -> MaskPublisher | None:
        """The ZeroMQ publisher (owned by its thread: read its counters, call nothing)."""
        return self._bridge.publisher if self._bridge else None

    # ------------------------------------------------------------------ lifecycle

    async def run(self) -> dict[str, Any]:
        """Run until every source ends (or :meth:`stop`); returns the summary."""
        try:
            await self._start()
            await self._process()
        except Stopped:
            log.info("stopped during start-up")
        finally:
            await self._shutdown()
        return self.summary()

    def stop(self) -> None:
        """Ordered shutdown: stop reading sources, finish frames already read."""
        self._stop_requested = True
        self._stop_event.set()
        for task in self._pumps:
            task.cancel()

    def abort(self) -> None:
        """Forced shutdown (a second Ctrl-C): queued frames are counted as aborted, not processed."""
        self._aborted = True
        self.stop()
        for task in self._workers:
            task.cancel()

    async def _in(self, pool: Executor, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(pool, fn, *args)

    async def _unless_stopped(self, work: Awaitable[T]) -> T:
        """``work``'s result, or Stopped as soon as stop() comes (the work is abandoned)."""
        task = asyncio.ensure_future(work)
        stopper = asyncio.create_task(self._stop_event.wait())
        try:
            await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopper.cancel()
        if task.done():
            return task.result()
        task.cancel()
        raise Stopped

    async def _start(self) -> None:
        await self._open_sources()
        hooks = RunHooks(self.run_id, self.stream_status, self._clock, self.telemetry, self.metrics,
                         self.segment_image, lambda: self._model_ready, self._geometry)
        self._outputs = await open_outputs(self.config, self._sources, hooks)
        self._bridge, viewer = self._outputs.bridge, self._outputs.viewer
        self.zmq_address = self._bridge.address if self._bridge else None
        self.viewer_port = viewer.port if viewer else None
        if self._stop_requested:
            raise Stopped
        self._backend = await self._unless_stopped(self._in(self._infer_pool, self._backend_factory))
        self.config = self.config.resolved(self._backend.device)
        await self._unless_stopped(self._in(self._infer_pool, self._backend.warmup, (1,)))
        self._model_ready = True
        for source in self._sources:
            await source.start()
        if self._bridge and self.config.zmq_wait_subscriber_s > 0:
            wanted = self.config.zmq_subscribers
            joined = await self._unless_stopped(
                self._bridge.wait_for_subscribers(self.config.zmq_wait_subscriber_s, wanted))
            log.info("%d subscriber(s) %s", wanted, "joined" if joined else "did not join in time; publishing anyway")

    async def _open_sources(self) -> None:
        config = self.config
        options = SourceOptions(realtime=config.realtime, rate=config.replay_rate, max_frames=config.max_frames,
                                clock=self._clock, executor=self._decode_pool, replay_mode=config.replay_mode,
                                limits=config.frame_limits, rtsp_transport=config.rtsp_transport,
                                live=config.live)
        named = [split_source_name(text, f"cam{i}") for i, text in enumerate(config.sources)]
        ids = [source_id for source_id, _ in named]
        duplicates = sorted({i for i in ids if ids.count(i) > 1})
        if duplicates:
            raise PipelineError(f"several sources are named {duplicates}; name them NAME=SOURCE")
        unknown = sorted(set(self._void_masks) - set(ids))
        if unknown:
            raise PipelineError(f"--void-mask for unknown stream(s) {unknown}; streams: {ids}")
        self._geometry.check_streams(ids)  # --camera: a known stream; undistorted on its decode thread
        for source_id, spec in named:
            self._sources.append(await open_source(source_id, spec, self._geometry.source_options(source_id, spec,
                                                                                                    options)))
            self._geometry.check_source(source_id, frame_size_of(self._sources[-1]))

    async def segment_image(self, image: Any) -> Segmented:
        """One uploaded HxWx3 RGB image through the model, on its own inference thread between batches
        (CUDA contexts are per thread): the viewer's POST /api/segment."""
        if self._backend is None or not self._model_ready:
            raise ModelNotReady("the model is still loading")
        return await self._in(self._infer_pool, segment_one, self._backend, image)

    async def _process(self) -> None:
        notify = asyncio.Event()
        for source in self._sources:
            policy = DropPolicy.DROP_OLDEST if source.live else DropPolicy.BLOCK
            depth = self.config.live_queue_depth if source.live else self.config.source_queue_depth
            # A live camera's queued frame evicted by a newer one was superseded, not lost to overload.
            cause = DROP_CAUSE_SUPERSEDED if source.live else DROP_CAUSE_QUEUE_FULL
            queue: BoundedQueue[Frame] = BoundedQueue(f"{source.source_id}.frames", depth, policy, notify=notify,
                                                      drop_cause=cause)
            self._queues.append(queue)
            self._streams[source.source_id] = (source, queue)
            self._pumps.append(asyncio.create_task(self._pump(source, queue), name=f"pump-{source.source_id}"))
        if self._stop_requested:  # stop() came between start-up and here
            self.stop()
        batcher = Batcher(self._queues, notify, self.config.batch, self._clock)
        self._workers = [
            asyncio.create_task(self._infer_loop(batcher), name="infer"),
            asyncio.create_task(self._publish_loop(), name="publish"),
        ]
        if self.config.stats_interval_s > 0:
            self._workers.append(asyncio.create_task(self._stats_loop(), name="stats"))
        try:
            await asyncio.gather(*self._workers[:2])
        except asyncio.CancelledError:
            if not self._aborted:
                raise
        finally:
            for task in (*self._workers, *self._pumps):
                task.cancel()
            await asyncio.gather(*self._workers, *self._pumps, return_exceptions=True)

    async def _shutdown(self) -> None:
        for source in self._sources:
            with contextlib.suppress(Exception):
                await source.close()
        for queue in self._queues:  # a forced stop leaves frames queued: count them
            while (frame := queue.get_nowait()) is not None:
                self.ledger.drop(frame.source_id, DROP_CAUSE_ABORTED)
        while (item := self._results.get_nowait()) is not None:
            self.ledger.fail(item.frame, DROP_CAUSE_ABORTED)
        await self._outputs.close(aborted=self._aborted)
        # A model still loading (stop during start-up) or a forced stop is not waited for.
        if self._backend is not None and not self._aborted:
            with contextlib.suppress(Exception):  # on its own thread: CUDA contexts are per thread
                await self._in(self._infer_pool, self._backend.close)
        self._infer_pool.shutdown(wait=self._model_ready and not self._aborted)
        self._post_pool.shutdown(wait=not self._aborted)
        self._decode_pool.shutdown(wait=not self._aborted)

    # ------------------------------------------------------------------ status

    def stream_status(self) -> dict[str, dict[str, Any]]:
        """Per stream: health, accounting, rates (for the summary, the viewer and the stats log)."""
        now_ns = self._clock.now_ns()
        out: dict[str, dict[str, Any]] = {}
        for source in self._sources:
            queue = self._streams.get(source.source_id, (None, None))[1]
            drops = self.ledger.drops_of(source, queue)
            published = self.telemetry.streams[source.source_id].frames if (
                source.source_id in self.telemetry.streams) else 0
            out[source.source_id] = {
                **source.health(now_ns).to_json(),
                "source": source.spec,
                "frames_in": source.frames_read,
                "dropped": dict(drops),
                "unaccounted": source.frames_read - published - sum(drops.values()) - self._in_flight(source),
                "published": published,
                "in_flight": self._in_flight(source),
                "fps": source.nominal_fps,
                "mask_fps": self._measured_fps(source.source_id),
                "lag_ms": round(source.max_lag_ms, 1),
            }
        return out

    def _measured_fps(self, stream_id: str) -> float | None:
        stats = self.telemetry.streams.get(stream_id)
        return round(stats.fps(), 3) if stats is not None and stats.fps() > 0 else None

    def _in_flight(self, source: FrameSource) -> int:
        """Frames of this stream between its queue and the publisher right now (0 after shutdown)."""
        queue = self._streams.get(source.source_id, (None, None))[1]
        return (len(queue) if queue else 0) + self.ledger.in_flight[source.source_id]

    def summary(self) -> dict[str, Any]:
        status = self.stream_status()
        for source in self._sources:
            self.telemetry.frames_read[source.source_id] = source.frames_read
        self.telemetry.drops.clear()
        for sid, entry in status.items():
            for cause, count in entry["dropped"].items():
                self.telemetry.drops[f"{sid}:{cause}"] += count
        for sink in self._outputs.sinks:  # outputs' own drops (a slow subscriber, a full recorder queue)
            for cause, count in sink.drops().items():
                self.telemetry.drops[f"{sink.name}:{cause}"] += count
        return self.telemetry.summary(streams=status)

    # ------------------------------------------------------------------ stages

    async def _pump(self, source: FrameSource, queue: BoundedQueue[Frame]) -> None:
        frame: Frame | None = None
        try:
            while True:
                frame = await source.recv()
                await queue.put(frame)
                frame = None
        except EndOfStream:
            pass
        except (asyncio.CancelledError, QueueClosed):
            pass  # stop(): end this stream, the frames already queued still get processed
        except Exception as exc:  # one broken stream must not stop the others
            message = f"stream {source.source_id} ({source.spec}) failed: {exc}"
            log.error(message)
            self.telemetry.errors.append(message)
            source.state = StreamState.FAILED
        finally:
            if frame is not None:  # read, but the stop came before it was queued
                self.ledger.drop(source.source_id, DROP_CAUSE_SHUTDOWN)
            queue.close()

    async def _infer_loop(self, batcher: Batcher) -> None:
        assert self._backend is not None
        gate = self._gate = StalenessGate(self.config.max_age_ms, self._clock)
        model = IsolatedInference(self._backend)
        try:
            while True:
                try:
                    frames = await batcher.next_batch()
                except AllStreamsEnded:
                    return
                live = {sid for sid, (source, _) in self._streams.items() if source.live}
                frames = gate.admit(frames, live, self.ledger)
                if not frames:
                    continue
                self.ledger.enter(frames)
                start_ns = self._clock.now_ns()
                results, failures = await self._in(self._infer_pool, model.infer, frames)
                done_ns = self._clock.now_ns()
                for frame, reason in failures:
                    self._inference_failed(frame, reason)
                for frame, mask, finite, timings, road in results:
                    await self._results.put(Inferred(frame, mask, finite, len(frames), start_ns, done_ns, timings,
                                                     road))
        finally:
            self._results.close()

    def _inference_failed(self, frame: Frame, reason: str) -> None:
        self.ledger.fail(frame, DROP_CAUSE_INFERENCE)
        failed = self.ledger.drops_of(self._streams[frame.source_id][0], None)[DROP_CAUSE_INFERENCE]
        if failed == 1 or failed % FAILURE_LOG_EVERY == 0:
            log.error("stream %s: inference failed on frame %d (%s), %d so far; the run goes on",
                      frame.source_id, frame.seq, reason, failed)

    async def _publish_loop(self) -> None:
        while True:
            try:
                item = await self._results.get()
            except QueueClosed:
                return
            void = self._void_masks.get(item.frame.source_id)
            # Without a publisher the mask is only scored and shown: skip compressing it.
            encoding = self._encoding if self._bridge else None
            encoded = await self._in(self._post_pool, encode_result, item, encoding, void, self.config.mask_scale,
                                     self._geometry.for_stream(item.frame.source_id))
            await self._publish(encoded)

    async def _publish(self, encoded: Encoded) -> None:
        assert self._backend is not None
        item, frame = encoded.item, encoded.item.frame
        source, _queue = self._streams[frame.source_id]
        now_ns = self._clock.now_ns()
        header = make_header(
            encoded,
            encoding=self._encoding,
            model_id=self._backend.model_id,
            publish_ns=now_ns,
            publish_wall_ns=self._clock.wall_ns(),
            invalid_reason=validity(item, now_ns, source.live, self.config.max_age_ms),
            dropped_before=self.ledger.gap_before(frame.source_id, frame.seq),
            health=source.health(now_ns),
            max_age_ms=self.config.max_age_ms if source.live else None,
            run_id=self.run_id,
        )
        result = Result(frame, header, encoded)
        for sink in self._outputs.sinks:
            await sink.send(result)
        sent_ns = self._clock.now_ns()
        if self._gate is not None:  # what admission to a batch costs until publish, as measured
            self._gate.observe((sent_ns - item.batch_start_ns) / 1e6)
        for observer in self.observers:
            observer(frame, header, sent_ns)
        self.ledger.published(frame.source_id)

    async def _stats_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.stats_interval_s)
            ring = self.telemetry.stages["end_to_end"].summary()
            states = " ".join(f"{sid}={s['state']}" for sid, s in self.stream_status().items())
            log.info("frames %d  fps %.1f  latency p50 %.1f ms  %s", self.telemetry.frames,
                     self.telemetry.fps(), ring.get("p50", float("nan")), states)
