"""Live-camera benchmark: one real RTSP camera on loopback, the whole pipeline, in one run.

The camera is ``tests/rtsp_server.py`` (GStreamer: x264 ultrafast/zerolatency, one keyframe a
second, RTP over RTSP/TCP), started by ``tests.rtsp_fixture.RtspServer``. Every frame carries a
barcode of the server's ``time.monotonic_ns()`` taken right before the frame enters the encoder;
CLOCK_MONOTONIC is shared by all processes on one host, so ``benchmarks.stamp.decode_stamp`` on a
published frame gives its true age with no clock sync. The pipeline is roadseg's, configured as
``roadseg run --source cam=rtsp://...`` would be (staleness budget, stall watchdog, batch size
from the device), with the viewer off; masks are published on ZeroMQ (a free loopback port,
nobody subscribed) unless ``--zmq off``. A ``Pipeline.observers`` callback records, for every
published mask, its publish time, roadseg's capture time and the decoded stamp.

Measured:

1. **Steady state** (``--seconds``, after skipping ``--warmup`` s past the first mask: OpenCV's
   open reads about a second of buffered frames): camera-send -> publish latency p50/p99/max
   (``publish_ns - stamp``); roadseg's own capture -> publish (``publish_ns - frame.capture_ns``);
   and per frame their difference, camera-send -> capture (encode, RTP/RTSP, FFmpeg decode,
   OpenCV's buffering). Also masks/s, frames read/s against the camera's rate, frames dropped by
   cause, and masks whose stamp could not be read.
2. **Recovery after a server restart**, ``--restarts`` times: SIGKILL (a crashed camera), down
   for ``--down`` s, a new server on the same port. Timed from the new server accepting
   connections to the first mask of a frame stamped after the kill (a genuinely new frame: the
   old server is dead), and to the first new mask published within ``--max-age-ms`` of its
   frame leaving the camera (one a planner could use); the server's own start-up time, how
   long the loss took to show, and the reconnect count's growth are recorded beside it.
3. **Stall and resume**, ``--stalls`` times: SIGSTOP (a hung camera whose sockets stay open) to
   the stream reported ``stalled``, held ``--stall-hold`` s, then SIGCONT to the stream ``live``
   again with a mask of a frame stamped after the SIGCONT.

States are polled every 5 ms, so recovery times carry that resolution on top of the watchdog's
own period (``LiveOptions.watchdog_period_s``).

    python -m benchmarks.live [--seconds 30] [--fps 25] [--size 640x360] [--model demo] \\
        [--backend torch] [--out benchmarks/results/live-cpu-2core-x86_64.json]

Needs the system GStreamer RTSP server (``scripts/install-system-deps``). Results:
``benchmarks/results/live-<machine>.json`` (with the command line, machine and library
versions) and a Markdown table on stdout for the README. Measurements, not tests:
``tests/test_benchmark_live.py`` runs a tiny configuration and asserts no speed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.live_report import cores_used, cpu_snapshot, markdown, p50_max, percentiles
from benchmarks.stamp import decode_stamp
from models.backends.base import InferenceBackend
from models.backends.common import DEVICE_CHOICES, PRECISION_CHOICES
from models.backends.registry import BACKEND_CHOICES
from models.cli_args import positive_float, size_arg
from stream.batcher import BatchConfig
from stream.config import DEFAULT_MAX_AGE_MS, PipelineConfig
from stream.frame import Frame
from stream.pipeline import Pipeline
from stream.sources.live import LiveOptions
from tests.rtsp_fixture import RtspServer

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results"
STREAM = "cam"
POLL_S = 0.005
NS_PER_MS = 1e6
NS_PER_S = 1e9
FIRST_MASK_TIMEOUT_S = 120.0  # model load + warm-up + first RTSP open on a cold, slow machine
RECOVERY_TIMEOUT_S = 30.0  # a recovery slower than this is recorded as failed (null), the run goes on
CONTENDED_CORES = 0.2  # other processes busier than this during the steady state: say the numbers are contended
SETTLE_MASKS = 5  # between repetitions: this many fresh masks with the stream live before the next fault


@dataclass(frozen=True, slots=True)
class Mask:
    publish_ns: int
    capture_ns: int
    stamp_ns: int | None  # the camera's send time; None when the barcode could not be read
    valid: bool  # the header's verdict (roadseg judges age from its capture time, not the camera's)

    @property
    def age_ms(self) -> float | None:
        """Camera send -> publish."""
        return None if self.stamp_ns is None else (self.publish_ns - self.stamp_ns) / NS_PER_MS


class Recorder:
    """A ``Pipeline.observers`` callback: one ``Mask`` per published frame of one stream.

    The stamp is decoded here, on the loop (about 0.1 ms at 640x360), so the recovery phases can
    see live whether a published frame is new; holding frames for a later decode would keep ~0.7 MB
    each alive.
    """

    def __init__(self, stream: str) -> None:
        self.stream = stream
        self.masks: list[Mask] = []

    def __call__(self, frame: Frame, header: Any, publish_ns: int) -> None:
        if frame.source_id == self.stream:
            self.masks.append(Mask(publish_ns, frame.capture_ns, decode_stamp(frame.image), bool(header.valid)))

    def first_stamped_after(self, start: int, stamp_ns: int, max_age_ms: float | None = None) -> Mask | None:
        """The first mask from index ``start`` on whose frame was sent after ``stamp_ns`` (and, with
        ``max_age_ms``, was published at most that long after it was sent)."""
        for mask in self.masks[start:]:
            if mask.stamp_ns is not None and mask.stamp_ns > stamp_ns:
                age = mask.age_ms
                if max_age_ms is None or (age is not None and age <= max_age_ms):
                    return mask
        return None


def late(masks: list[Mask], max_age_ms: float) -> dict[str, int]:
    """Masks published more than ``max_age_ms`` after their frame left the camera, and how many of
    those the header still called valid (roadseg can only see the age since its own capture)."""
    old = [m for m in masks if m.age_ms is not None and m.age_ms > max_age_ms]
    return {"late": len(old), "late_marked_valid": sum(m.valid for m in old)}


class LiveBench:
    """The server, the pipeline running in this loop, and the recorder."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.server = RtspServer(fps=args.fps, size=args.size)
        self.recorder = Recorder(STREAM)
        self.backend: InferenceBackend | None = None
        self.pipeline: Pipeline | None = None
        self.task: asyncio.Task[dict[str, Any]] | None = None
        self.fault_starts: list[int] = []  # index of the first mask after each fault, in order
        self.summary: dict[str, Any] = {}  # the pipeline's, once the session ended

    def config(self) -> PipelineConfig:
        args = self.args
        # `roadseg run --source cam=rtsp://... --viewer off` defaults (max batch from the device).
        return PipelineConfig(sources=(f"{STREAM}={self.server.url}",), model=args.model, backend=args.backend,
                              device=args.device, precision=args.precision, zmq_address=args.zmq, viewer=None,
                              stats_interval_s=0, batch=BatchConfig(max_batch=1, max_wait_ms=4.0),
                              auto_max_batch=True, max_age_ms=args.max_age_ms,
                              live=LiveOptions(stall_ms=args.stall_ms))

    def backend_factory(self, config: PipelineConfig) -> Callable[[], InferenceBackend]:
        def make() -> InferenceBackend:
            from models.backends.registry import create_backend
            from models.store.registry import load_model

            model, card = load_model(config.model)
            self.backend = create_backend(config.backend, model, card, device=config.device,
                                          precision=config.precision, input_size=config.input_size)
            return self.backend

        return make

    # ------------------------------------------------------------------ helpers

    def status(self) -> dict[str, Any]:
        assert self.pipeline is not None
        return self.pipeline.stream_status()[STREAM]

    def state(self) -> str:
        return str(self.status()["state"])

    @property
    def masks(self) -> list[Mask]:
        return self.recorder.masks

    def observer(self) -> Callable[[Frame, Any, int], None]:
        """What sees every published mask (``benchmarks.soak`` aggregates instead of keeping them)."""
        return self.recorder

    async def until(self, predicate: Callable[[], Any], timeout_s: float) -> Any:
        """``predicate()``'s first truthy value, polled; None after ``timeout_s``. Raises if the pipeline died."""
        deadline = time.monotonic() + timeout_s
        while True:
            value = predicate()
            if value:
                return value
            assert self.task is not None
            if self.task.done():
                self.task.result()  # its exception, if any
                raise RuntimeError("the pipeline ended during the benchmark")
            if time.monotonic() > deadline:
                return None
            await asyncio.sleep(POLL_S)

    async def settle(self) -> None:
        """Live, with SETTLE_MASKS masks of frames sent after now: a clean start for the next fault."""
        start, now_ns = len(self.masks), time.monotonic_ns()

        def fresh() -> bool:
            new = [m for m in self.masks[start:] if m.stamp_ns is not None and m.stamp_ns > now_ns]
            return self.state() == "live" and len(new) >= SETTLE_MASKS

        if not await self.until(fresh, RECOVERY_TIMEOUT_S):
            raise RuntimeError(f"the stream did not settle (state {self.state()})")

    # ------------------------------------------------------------------ phases

    async def steady(self) -> dict[str, Any]:
        args = self.args
        first = await self.until(lambda: self.masks[0] if self.masks else None, FIRST_MASK_TIMEOUT_S)
        if first is None:
            raise RuntimeError(f"no mask within {FIRST_MASK_TIMEOUT_S:.0f} s (state {self.state()})")
        first_age = first.age_ms
        skip_s = args.warmup - (time.monotonic_ns() - first.publish_ns) / NS_PER_S
        await asyncio.sleep(max(0.0, skip_s))
        cpu0 = cpu_snapshot(self.server.pid)
        before, start, t0 = self.status(), len(self.masks), time.monotonic_ns()
        await asyncio.sleep(args.seconds)
        after, t1 = self.status(), time.monotonic_ns()
        cpu1 = cpu_snapshot(self.server.pid)
        window = self.masks[start:]
        span_s = (t1 - t0) / NS_PER_S
        stamped = [(m, m.stamp_ns) for m in window if m.stamp_ns is not None]
        dropped = Counter(after["dropped"])
        dropped.subtract(before["dropped"])
        return {
            "seconds": round(span_s, 3),
            "first_mask_age_ms": None if first_age is None else round(first_age, 1),
            "masks": len(window),
            "masks_per_s": round(len(window) / span_s, 2),
            "camera_fps": args.fps,
            "frames_read_per_s": round((after["frames_in"] - before["frames_in"]) / span_s, 2),
            "dropped": {cause: n for cause, n in sorted(dropped.items()) if n},
            "stamps_unreadable": len(window) - len(stamped),
            f"over_{args.max_age_ms:g}ms": late(window, args.max_age_ms),
            "reconnects": after["reconnects"] - before["reconnects"],
            "cpu_cores_used": cores_used(cpu0, cpu1, span_s),
            "camera_to_publish_ms": percentiles([(m.publish_ns - sent) / NS_PER_MS for m, sent in stamped]),
            "capture_to_publish_ms": percentiles([(m.publish_ns - m.capture_ns) / NS_PER_MS for m in window]),
            "camera_to_capture_ms": percentiles([(m.capture_ns - sent) / NS_PER_MS for m, sent in stamped]),
        }

    async def restart_once(self) -> dict[str, Any]:
        await self.settle()
        reconnects, start = self.status()["reconnects"], len(self.masks)
        self.fault_starts.append(start)
        kill_ns = time.monotonic_ns()
        self.server.kill()
        lost = await self.until(lambda: self.state() != "live" and time.monotonic_ns(), self.args.down + 5)
        await asyncio.sleep(max(0.0, self.args.down - (time.monotonic_ns() - kill_ns) / NS_PER_S))
        restart_ns = time.monotonic_ns()
        await asyncio.to_thread(self.server.start)  # blocks until READY: off the pipeline's loop
        ready_ns = time.monotonic_ns()
        new = await self.until(lambda: self.recorder.first_stamped_after(start, kill_ns), RECOVERY_TIMEOUT_S)
        on_time = None
        if new is not None:
            on_time = await self.until(
                lambda: self.recorder.first_stamped_after(start, kill_ns, max_age_ms=self.args.max_age_ms),
                RECOVERY_TIMEOUT_S)
        grown = self.status()["reconnects"] - reconnects
        old_masks = sum(1 for m in self.masks[start:] if m.stamp_ns is not None and m.stamp_ns <= kill_ns)
        return {
            "down_s": round((restart_ns - kill_ns) / NS_PER_S, 3),
            "loss_detected_s": None if not lost else round((lost - kill_ns) / NS_PER_S, 3),
            "server_start_s": round((ready_ns - restart_ns) / NS_PER_S, 3),
            "first_new_mask_s": None if new is None else round((new.publish_ns - ready_ns) / NS_PER_S, 3),
            "first_new_mask_age_ms": None if new is None or new.age_ms is None else round(new.age_ms, 1),
            "within_budget_s": None if on_time is None else round((on_time.publish_ns - ready_ns) / NS_PER_S, 3),
            "masks_of_old_frames_after_kill": old_masks,
            "reconnects_added": grown,
        }

    async def stall_once(self) -> dict[str, Any]:
        await self.settle()
        start = len(self.masks)
        self.fault_starts.append(start)
        pause_ns = time.monotonic_ns()
        self.server.pause()
        stalled = await self.until(lambda: self.state() == "stalled" and time.monotonic_ns(), RECOVERY_TIMEOUT_S)
        if stalled:
            await asyncio.sleep(self.args.stall_hold)
        resume_ns = time.monotonic_ns()
        self.server.resume()
        state_live = await self.until(lambda: self.state() == "live" and time.monotonic_ns(), RECOVERY_TIMEOUT_S)
        fresh = await self.until(lambda: self.state() == "live" and self.recorder.first_stamped_after(start, resume_ns),
                                 RECOVERY_TIMEOUT_S)
        return {
            "stall_detected_s": None if not stalled else round((stalled - pause_ns) / NS_PER_S, 3),
            "stopped_s": round((resume_ns - pause_ns) / NS_PER_S, 3),
            "state_live_s": None if not state_live else round((state_live - resume_ns) / NS_PER_S, 3),
            "live_with_fresh_mask_s": None if not fresh else round((fresh.publish_ns - resume_ns) / NS_PER_S, 3),
            "first_fresh_mask_age_ms": None if not fresh or fresh.age_ms is None else round(fresh.age_ms, 1),
        }

    # ------------------------------------------------------------------ the run

    @contextlib.asynccontextmanager
    async def session(self) -> AsyncIterator[Pipeline]:
        """The camera server and the pipeline running in this loop; on exit the pipeline is stopped
        (its summary in ``self.summary``) and the server too. Shared with ``benchmarks.soak``."""
        try:
            await asyncio.to_thread(self.server.start)
        except RuntimeError as exc:
            raise SystemExit(f"{exc}\n(the test camera needs the system GStreamer RTSP server: "
                             "scripts/install-system-deps)") from exc
        try:
            config = self.config()
            self.pipeline = Pipeline(config, self.backend_factory(config))
            self.pipeline.observers.append(self.observer())
            self.task = asyncio.create_task(self.pipeline.run())
            try:
                yield self.pipeline
            finally:
                self.pipeline.stop()
                self.summary = await asyncio.wait_for(self.task, 60)
        finally:
            await asyncio.to_thread(self.server.stop)

    async def run(self) -> dict[str, Any]:
        args = self.args
        async with self.session():
            steady = await self.steady()
            print("steady", steady, flush=True)
            restarts = []
            for _ in range(args.restarts):
                restarts.append(await self.restart_once())
                print("restart", restarts[-1], flush=True)
            stalls = []
            for _ in range(args.stalls):
                stalls.append(await self.stall_once())
                print("stall", stalls[-1], flush=True)
        summary = self.summary
        stream = summary["streams"][STREAM]
        # Each fault's aftermath: its masks until the next fault (the last one's, until the end).
        bounds = [*self.fault_starts, len(self.masks)]
        for entry, begin, end in zip([*restarts, *stalls], bounds, bounds[1:], strict=False):
            entry[f"over_{args.max_age_ms:g}ms_until_next_fault"] = late(self.masks[begin:end], args.max_age_ms)
        assert self.backend is not None
        return {
            "steady": steady,
            "restarts": restarts,
            "restart_summary": {key: p50_max([r[key] for r in restarts])
                                for key in ("first_new_mask_s", "within_budget_s", "loss_detected_s",
                                            "server_start_s")},
            "stalls": stalls,
            "stall_summary": {key: p50_max([s[key] for s in stalls])
                              for key in ("stall_detected_s", "state_live_s", "live_with_fresh_mask_s")},
            "backend": {"name": self.backend.name, "device": self.backend.device,
                        "precision": self.backend.precision, "model_id": self.backend.model_id},
            "run_summary": {"published": stream["published"], "frames_in": stream["frames_in"],
                            "dropped": stream["dropped"], "unaccounted": stream["unaccounted"],
                            "reconnects": stream["reconnects"], "state": stream["state"],
                            "errors": summary["errors"]},
        }


def add_camera_args(parser: argparse.ArgumentParser) -> None:
    """The camera, model and pipeline options (shared with ``benchmarks.soak``)."""
    parser.add_argument("--fps", type=int, default=25, help="camera frame rate")
    parser.add_argument("--size", type=size_arg, default=(640, 360), metavar="WxH", help="camera frame size")
    parser.add_argument("--model", default="demo")
    parser.add_argument("--backend", default="torch", choices=BACKEND_CHOICES)
    parser.add_argument("--device", default="auto", choices=DEVICE_CHOICES)
    parser.add_argument("--precision", default="auto", choices=PRECISION_CHOICES)
    parser.add_argument("--zmq", default="tcp://127.0.0.1:0", metavar="ADDR|off",
                        help="publish masks here (default: a free loopback port); off: do not publish")
    parser.add_argument("--max-age-ms", type=positive_float, default=DEFAULT_MAX_AGE_MS)
    parser.add_argument("--stall-ms", type=positive_float, default=LiveOptions.stall_ms)
    parser.add_argument("--down", type=float, default=2.0, help="seconds the killed server stays down")
    parser.add_argument("--stall-hold", type=float, default=1.0, help="seconds stopped after the stall is reported")


def check_camera_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if args.fps <= 0 or args.down < 0 or args.stall_hold < 0:
        parser.error("--fps must be positive; --down and --stall-hold not negative")
    args.zmq = None if args.zmq == "off" else args.zmq


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=positive_float, default=30.0, help="steady-state measurement (s)")
    parser.add_argument("--warmup", type=float, default=2.0, help="skipped after the first mask (s)")
    add_camera_args(parser)
    parser.add_argument("--restarts", type=int, default=3, help="server kill/restart repetitions")
    parser.add_argument("--stalls", type=int, default=2, help="SIGSTOP/SIGCONT repetitions")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    check_camera_args(parser, args)
    if args.restarts < 0 or args.stalls < 0 or args.warmup < 0:
        parser.error("--restarts, --stalls and --warmup must not be negative")
    return args


def quiet_openmp() -> bool:
    """As `roadseg run` does (stream/cli.py), before torch loads OpenMP: spinning OpenMP workers turn
    contention for the cores (the camera's decode thread, the server) into long stalls. Without
    effect when torch is already loaded (a test session): returns whether it applies, for the results."""
    effective = "torch" not in sys.modules
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    return effective


def run_and_save(
    script: str, args: argparse.Namespace, argv: list[str] | None, settings: dict[str, Any], omp_effective: bool,
    run: Callable[[], Coroutine[Any, Any, dict[str, Any]]],
) -> tuple[dict[str, Any], Path]:
    """Run one camera benchmark (``run``) and write its results with the machine, the command line,
    the camera and ``settings``, to ``--out`` or ``benchmarks/results/<script>-<machine>.json``."""
    from benchmarks.report import machine_info, machine_name  # imports torch: after quiet_openmp()

    argv = sys.argv[1:] if argv is None else argv
    width, height = args.size
    results: dict[str, Any] = {
        "machine": machine_info(), "model": args.model,
        "command": " ".join([f"python -m benchmarks.{script}", *argv]),
        "camera": {"server": "tests/rtsp_server.py", "size": f"{width}x{height}", "fps": args.fps,
                   "transport": "tcp"},
        "settings": {**settings, "max_age_ms": args.max_age_ms, "stall_ms": args.stall_ms,
                     "omp_wait_policy": os.environ["OMP_WAIT_POLICY"], "omp_policy_applies": omp_effective},
    }
    started, load_before = time.monotonic(), os.getloadavg()
    results.update(asyncio.run(run()))
    results["wall_s"] = round(time.monotonic() - started, 1)
    # Other work on the machine shows here: on 2 cores a busy neighbour slows the model many times over.
    results["loadavg_1min"] = {"before": load_before[0], "after": os.getloadavg()[0]}
    out = args.out or RESULTS / f"{script}-{machine_name()}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    return results, out


def main(argv: list[str] | None = None) -> None:
    omp_effective = quiet_openmp()
    args = parse_args(argv)
    settings = {"seconds": args.seconds, "warmup_s": args.warmup, "restarts": args.restarts, "down_s": args.down,
                "stalls": args.stalls, "stall_hold_s": args.stall_hold, "zmq": args.zmq is not None}
    results, out = run_and_save("live", args, argv, settings, omp_effective, LiveBench(args).run)
    print(markdown(results))
    other = results["steady"]["cpu_cores_used"]["other"]
    if other is not None and other > CONTENDED_CORES:
        print(f"WARNING: other processes kept {other} cores busy during the steady state: contended numbers")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
