"""The ZeroMQ bridge as a sink: the publisher on its own thread, the status beacon, and each
result's mask (and drivable space, and bird's-eye grid) sent as ``--zmq-mode`` wants; the camera
files of streams started with ``--camera`` go out once a second (``camera/<stream>``) and right before
each such stream's first mask, so a subscriber there from frame 0 has it before it needs it.

It binds before the model loads (:meth:`BridgeSink.open`), so a taken port fails in well under a
second and status messages flow from then on: a subscriber sees "connecting", not silence.
At close, each stream's end of stream goes out after its last mask, then the socket lingers
briefly so both reach subscribers that keep up.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Mapping

from decision_bridge.camera_info import CAMERA_PERIOD_MS, CameraInfoHeader, camera_hash, encode_camera_info
from decision_bridge.curve import CurveServer
from decision_bridge.io_thread import PublisherThread
from decision_bridge.publisher import MaskPublisher
from decision_bridge.schema import encode
from stream.clock import Clock
from stream.delivery import DeliveryMode, deliver, wait_for_subscribers
from stream.geometry import bev_parts
from stream.liveness import Status, StatusBeacon
from stream.outputs import bind_publisher
from stream.sinks import Result, off_loop
from stream.stages import road_parts

# At shutdown the last masks and the end-of-stream messages still queued get this long to reach subscribers.
FLUSH_LINGER_MS = 500
DROP_CAUSE_HWM = "hwm"  # a subscriber's queue (or the publisher thread's) was full: that subscriber sees a gap


class BridgeSink:
    name = "zmq"

    def __init__(self, io: PublisherThread, mode: DeliveryMode, beacon: StatusBeacon,
                 cameras: Mapping[str, bytes] | None = None, run_id: str = "", clock: Clock | None = None) -> None:
        self._io = io
        self._mode = mode
        self._beacon = beacon
        self._beacon_task = asyncio.create_task(beacon.run(), name="status")
        self._cameras = dict(cameras or {})  # stream -> its camera file, canonical JSON
        self._hashes = {stream_id: camera_hash(body) for stream_id, body in self._cameras.items()}
        self._run_id = run_id
        self._clock = clock
        self._cameras_told: set[str] = set()  # streams whose first mask went out after their camera file
        self._camera_task = asyncio.create_task(self._send_cameras(), name="cameras") \
            if self._cameras and clock is not None else None
        self._closed = False

    @classmethod
    def open(cls, address: str, *, fallback: bool, mode: DeliveryMode, curve: CurveServer | None,
             stream_ids: Iterable[str], run_id: str, status: Callable[[], Status], clock: Clock,
             max_age_ms: float, cameras: Mapping[str, bytes] | None = None) -> BridgeSink:
        """Bind (raises at once on a bad or taken address), start the publisher's thread, the
        status beacon and the camera files' (``cameras``: stream -> canonical camera JSON). Call on
        the event loop."""
        publisher = bind_publisher(address, fallback=fallback, mode=mode, curve=curve, stream_ids=stream_ids)
        io = PublisherThread(publisher)  # from here on, the socket is the thread's alone
        io.start()
        return cls(io, mode, StatusBeacon(io, run_id, status, clock, max_age_ms=max_age_ms), cameras, run_id, clock)

    @property
    def publisher(self) -> MaskPublisher:
        return self._io.publisher

    @property
    def address(self) -> str:
        return str(self._io.publisher.bound_address)

    async def wait_for_subscribers(self, timeout_s: float, count: int) -> bool:
        return await wait_for_subscribers(self._io, timeout_s, count)

    async def send(self, result: Result) -> None:
        stream_id = result.header.stream_id
        if stream_id in self._cameras and stream_id not in self._cameras_told and self._clock is not None:
            self._cameras_told.add(stream_id)  # the file before the first mask that names it
            await deliver(self._io, self._mode, self._camera_parts(stream_id), single_frame=False)
        await deliver(self._io, self._mode, encode(result.header, result.encoded.payload))
        if result.encoded.road is not None:
            await deliver(self._io, self._mode, road_parts(result.header, result.encoded.road), single_frame=False)
        if result.encoded.bev is not None:
            await deliver(self._io, self._mode, bev_parts(result.header, result.encoded.bev), single_frame=False)

    def _camera_parts(self, stream_id: str) -> list[bytes]:
        assert self._clock is not None
        header = CameraInfoHeader(stream_id, self._run_id, self._hashes[stream_id], CAMERA_PERIOD_MS,
                                  self._clock.now_ns(), self._clock.wall_ns())
        return encode_camera_info(header, self._cameras[stream_id])

    async def _send_cameras(self) -> None:
        """Until closed: each stream's camera file, every CAMERA_PERIOD_MS (a refused one goes next time)."""
        while True:
            for stream_id in self._cameras:
                self._io.send(self._camera_parts(stream_id), count_drop=False)
            await asyncio.sleep(CAMERA_PERIOD_MS / 1e3)

    def drops(self) -> Mapping[str, int]:
        count = self._io.publisher.dropped_hwm + self._io.dropped_queue
        return {DROP_CAUSE_HWM: count} if count else {}

    async def close(self, *, aborted: bool = False) -> None:
        if self._closed:
            return
        self._closed = True
        tasks = [t for t in (self._beacon_task, self._camera_task) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if not aborted:
            await self._beacon.finish()
        # Off the loop: the linger can take its whole length when a subscriber is gone.
        await off_loop("zmq-close", self._io.close, 0 if aborted else FLUSH_LINGER_MS)
