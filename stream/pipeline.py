"""The pipeline runner: sources -> per-source queues -> batcher -> inference ->
post-processing -> ZeroMQ publish + viewer + telemetry.

Threads: one per source (decode), one for inference (the model is used by one
thread at a time), one for post-processing (IoU, mask compression). The event
loop only moves references and sends already-encoded bytes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from decision_bridge.publisher import MaskPublisher
from decision_bridge.schema import Encoding, encode
from models.backends.base import InferenceBackend
from stream.batcher import AllStreamsEnded, Batcher
from stream.clock import MONOTONIC, Clock
from stream.config import PipelineConfig
from stream.frame import Frame
from stream.queues import BoundedQueue, DropPolicy, QueueClosed
from stream.sources import EndOfStream, FrameSource, SourceOptions, open_source, split_source_name
from stream.stages import Encoded, Inferred, encode_result, make_header, validity
from stream.telemetry import FrameRecord, Telemetry
from stream.void_mask import parse_void_masks
from web_viewer.app import ViewerServer
from web_viewer.hub import ViewerHub

log = logging.getLogger(__name__)
T = TypeVar("T")
BackendFactory = Callable[[], InferenceBackend]


class PipelineError(ValueError):
    """The pipeline cannot start with this configuration; the message says why."""


class Pipeline:
    def __init__(self, config: PipelineConfig, backend_factory: BackendFactory, clock: Clock = MONOTONIC):
        self.config = config
        self.telemetry = Telemetry()
        self._backend_factory = backend_factory
        self._clock = clock
        self._encoding = Encoding(config.mask_encoding)
        self._void_masks = parse_void_masks(config.void_masks)
        self._infer_pool = ThreadPoolExecutor(1, thread_name_prefix="infer")
        self._post_pool = ThreadPoolExecutor(1, thread_name_prefix="post")
        self._decode_pool = ThreadPoolExecutor(config.decode_threads or os.cpu_count() or 1,
                                               thread_name_prefix="decode")
        self._backend: InferenceBackend | None = None
        self._sources: list[FrameSource] = []
        self._queues: list[BoundedQueue[Frame]] = []
        self._streams: dict[str, tuple[FrameSource, BoundedQueue[Frame]]] = {}  # by stream id
        self._results: BoundedQueue[Inferred] = BoundedQueue("results", config.result_depth, DropPolicy.BLOCK)
        self._publisher: MaskPublisher | None = None
        self._hub: ViewerHub | None = None
        self._viewer: ViewerServer | None = None
        self._pumps: list[asyncio.Task[None]] = []
        self._drops_seen: dict[str, int] = {}
        self._stop_requested = False
        self.viewer_port: int | None = None
        self.zmq_address: str | None = None

    # ------------------------------------------------------------------ lifecycle

    async def run(self) -> dict[str, Any]:
        """Run until every source ends (or :meth:`stop`); returns the telemetry summary."""
        try:
            await self._start()
            await self._process()
        finally:
            await self._shutdown()
        return self.telemetry.summary()

    def stop(self) -> None:
        """Ordered shutdown: stop reading sources, finish frames already read."""
        self._stop_requested = True
        for task in self._pumps:
            task.cancel()

    async def _in(self, pool: ThreadPoolExecutor, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(pool, fn, *args)

    async def _start(self) -> None:
        self._backend = await self._in(self._infer_pool, self._backend_factory)
        await self._in(self._infer_pool, self._backend.warmup, (1,))
        await self._open_sources()
        if self.config.zmq_address:
            self._publisher = MaskPublisher(self.config.zmq_address)
            self.zmq_address = self._publisher.bind()
            log.info("masks: %s  (watch: python -m decision_bridge.subscriber %s)",
                     self.zmq_address, self.zmq_address)
        if self.config.viewer:
            self._hub = ViewerHub()
            self._hub.start()
            self._viewer = ViewerServer(self._hub, *self.config.viewer)
            self.viewer_port = await self._viewer.start()
            log.info("viewer: http://%s:%d/", self.config.viewer[0], self.viewer_port)
        if self._publisher and self.config.zmq_wait_subscriber_s > 0:
            joined = await self._publisher.wait_for_subscriber(self.config.zmq_wait_subscriber_s)
            log.info("subscriber %s", "joined" if joined else "did not join in time; publishing anyway")

    async def _open_sources(self) -> None:
        options = SourceOptions(realtime=self.config.realtime, rate=self.config.replay_rate,
                                max_frames=self.config.max_frames, clock=self._clock, executor=self._decode_pool)
        named = [split_source_name(text, f"cam{i}") for i, text in enumerate(self.config.sources)]
        ids = [source_id for source_id, _ in named]
        duplicates = sorted({i for i in ids if ids.count(i) > 1})
        if duplicates:
            raise PipelineError(f"several sources are named {duplicates}; name them NAME=SOURCE")
        unknown = sorted(set(self._void_masks) - set(ids))
        if unknown:
            raise PipelineError(f"--void-mask for unknown stream(s) {unknown}; streams: {ids}")
        for source_id, spec in named:
            self._sources.append(await open_source(source_id, spec, options))

    async def _process(self) -> None:
        notify = asyncio.Event()
        depth = self.config.source_queue_depth
        for source in self._sources:
            policy = DropPolicy.DROP_OLDEST if source.live else DropPolicy.BLOCK
            queue: BoundedQueue[Frame] = BoundedQueue(f"{source.source_id}.frames", depth, policy, notify=notify)
            self._queues.append(queue)
            self._streams[source.source_id] = (source, queue)
            self._pumps.append(asyncio.create_task(self._pump(source, queue), name=f"pump-{source.source_id}"))
        batcher = Batcher(self._queues, notify, self.config.batch, self._clock)
        workers = [
            asyncio.create_task(self._infer_loop(batcher), name="infer"),
            asyncio.create_task(self._publish_loop(), name="publish"),
        ]
        if self.config.stats_interval_s > 0:
            workers.append(asyncio.create_task(self._stats_loop(), name="stats"))
        try:
            await asyncio.gather(*workers[:2])
        finally:
            for task in (*workers, *self._pumps):
                task.cancel()
            await asyncio.gather(*workers, *self._pumps, return_exceptions=True)

    async def _shutdown(self) -> None:
        for source in self._sources:
            with contextlib.suppress(Exception):
                await source.close()
            self.telemetry.add_drops(source.source_id, source.drops)
            self.telemetry.frames_read[source.source_id] = source.frames_read
        for queue in self._queues:
            self.telemetry.add_drops(queue.name.split(".")[0], queue.drops)
        if self._viewer:
            await self._viewer.close()
        if self._hub:
            await self._hub.close()
        if self._publisher:
            self.telemetry.add_drops("zmq", Counter(hwm=self._publisher.dropped_hwm))
            self._publisher.close()
        self._infer_pool.shutdown(wait=True)
        self._post_pool.shutdown(wait=True)
        self._decode_pool.shutdown(wait=True)

    # ------------------------------------------------------------------ stages

    async def _pump(self, source: FrameSource, queue: BoundedQueue[Frame]) -> None:
        try:
            while True:
                await queue.put(await source.recv())
        except EndOfStream:
            pass
        except asyncio.CancelledError:
            pass  # stop(): end this stream, the frames already queued still get processed
        except Exception as exc:  # one broken stream must not stop the others
            message = f"stream {source.source_id} ({source.spec}) failed: {exc}"
            log.error(message)
            self.telemetry.errors.append(message)
        finally:
            queue.close()

    async def _infer_loop(self, batcher: Batcher) -> None:
        assert self._backend is not None
        try:
            while True:
                try:
                    frames = await batcher.next_batch()
                except AllStreamsEnded:
                    return
                start_ns = self._clock.now_ns()
                out = await self._in(self._infer_pool, self._backend.infer, [f.image for f in frames])
                done_ns = self._clock.now_ns()
                for frame, mask, finite in zip(frames, out.masks, out.valid, strict=True):
                    await self._results.put(
                        Inferred(frame, mask, finite, len(frames), start_ns, done_ns, out.timings)
                    )
        finally:
            self._results.close()

    async def _publish_loop(self) -> None:
        while True:
            try:
                item = await self._results.get()
            except QueueClosed:
                return
            void = self._void_masks.get(item.frame.source_id)
            # Without a publisher the mask is only scored and shown: skip compressing it.
            encoding = self._encoding if self._publisher else None
            encoded = await self._in(self._post_pool, encode_result, item, encoding, void)
            self._publish(encoded)

    def _publish(self, encoded: Encoded) -> None:
        assert self._backend is not None
        item, frame = encoded.item, encoded.item.frame
        source, queue = self._streams[frame.source_id]
        now_ns = self._clock.now_ns()
        header = make_header(
            encoded,
            encoding=self._encoding,
            model_id=self._backend.model_id,
            publish_ns=now_ns,
            publish_wall_ns=self._clock.wall_ns(),
            invalid_reason=validity(item, now_ns, source.live, self.config.live_max_age_ms),
            dropped_before=self._new_drops(source, queue),
        )
        if self._publisher:
            self._publisher.send(encode(header, encoded.payload))
        sent_ns = self._clock.now_ns()
        if self._hub:
            self._hub.offer(frame.source_id, frame.image, item.mask, self._viewer_info(header))
        self.telemetry.record(
            FrameRecord(
                stream_id=frame.source_id,
                queue_ms=header.timings.queue_ms,
                preprocess_ms=header.timings.preprocess_ms,
                inference_ms=header.timings.inference_ms,
                postprocess_ms=header.timings.postprocess_ms,
                publish_ms=(sent_ns - item.done_ns) / 1e6,
                end_to_end_ms=(sent_ns - frame.capture_ns) / 1e6,
                confusion=encoded.confusion,
            ),
            sent_ns,
        )

    def _viewer_info(self, header: Any) -> dict[str, Any]:
        info: dict[str, Any] = {"seq": header.seq, "latency_ms": round(header.latency_ms, 1), "valid": header.valid,
                                "fps": round(self.telemetry.fps(), 1), "model": header.model_id}
        if header.iou is not None and header.iou.mean is not None:
            info["miou"] = round(header.iou.mean, 3)
        return info

    def _new_drops(self, source: FrameSource, queue: BoundedQueue[Frame]) -> int:
        """Frames of this stream dropped (any cause) since its previous message."""
        total = sum(source.drops.values()) + sum(queue.drops.values())
        new = total - self._drops_seen.get(source.source_id, 0)
        self._drops_seen[source.source_id] = total
        return new

    async def _stats_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.stats_interval_s)
            ring = self.telemetry.stages["end_to_end"].summary()
            log.info("frames %d  fps %.1f  latency p50 %.1f ms", self.telemetry.frames,
                     self.telemetry.fps(), ring.get("p50", float("nan")))
