"""Soak: the live-camera pipeline for a long time, measured in windows, to catch slow leaks.

Users report memory growth over hours, latency creeping up while nothing drops frames, and RTSP
streams that never reconnect. This runs what ``benchmarks.live`` runs (the test RTSP camera with a
time-stamp barcode per frame, roadseg's ``Pipeline`` in this process with an observer callback;
the session and options are shared with it) for ``--minutes``, with the camera server SIGKILLed
and restarted on the same port every ``--restart-every`` s, optionally SIGSTOPped for
``--stall-hold`` s every ``--stall-every`` s, and a real ZeroMQ subscriber
(``decision_bridge.subscriber.MaskSubscriber``, in a thread) consuming every mask. With
``--viewer`` the viewer is served too and watched by ``roadseg watch`` in another process (its
frames counted per window), so the hub's encoding and sending are in the soak.

Per ``--window-s`` window (aggregates only: the soak itself must not grow): RSS and peak RSS from
``/proc/self/status``, Python and OS threads, open fds, camera-send -> publish p50/p99/max and
capture -> publish p50/p99, masks/s, frames dropped by cause, reconnects, stream state, load.
Windows with a restart or stall in them are marked; latency fits use the fault-free ones.

Report, after ``--warmup-windows``: least-squares RSS MB/h and p50/p99 ms/h, threads and fds at
the end (once abandoned reader threads had up to ``END_SETTLE_S`` to exit) against after the
warm-up, and each restart's recovery, checked against targets (``benchmarks.soak_report``).

    python -m benchmarks.soak [--minutes 30] [--window-s 60] [--restart-every 300] [--stall-every 0] \\
        [--subscriber] [--viewer] [--out benchmarks/results/soak-cpu-2core-x86_64.json]
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

from benchmarks.live import (
    NS_PER_MS,
    NS_PER_S,
    RECOVERY_TIMEOUT_S,
    STREAM,
    LiveBench,
    add_camera_args,
    check_camera_args,
    quiet_openmp,
    run_and_save,
)
from benchmarks.live_report import percentiles
from benchmarks.soak_report import baseline_index, markdown, resources, settled, summarize, targets
from benchmarks.stamp import decode_stamp
from decision_bridge.subscriber import MaskSubscriber
from models.cli_args import positive_float
from stream.config import PipelineConfig
from stream.frame import Frame

FIRST_MASK_TIMEOUT_S = 120.0  # model load + first RTSP open on a cold, slow machine
END_SETTLE_S = 20.0  # an abandoned reader can sit in a read for READ_TIMEOUT_MS (5 s), then release
SETTLE_POLL_S = 0.25
# Faults start this long after the half-period mark: when that mark is also a window boundary, the
# window closes (and samples) before the fault begins instead of racing it.
FAULT_PHASE_S = 1.0
FAULT_FINISH_S = RECOVERY_TIMEOUT_S + 30.0  # the last fault's server start and recovery, at most
SUBSCRIBER_POLL_S = 0.2
SUBSCRIBER_JOIN_S = 5.0
# roadseg watch gives up after this long without a frame; longer than a camera restart's gap.
WATCH_TIMEOUT_S = 60


class WindowRecorder:
    """A ``Pipeline.observers`` callback that aggregates the current window and nothing more:
    latencies are kept only until the window closes (at most window x frame rate floats)."""

    def __init__(self, stream: str) -> None:
        self.stream = stream
        self.camera_ms: list[float] = []
        self.capture_ms: list[float] = []
        self.masks = 0
        self.unreadable = 0
        self._watch_after_ns: int | None = None
        self.found_ns: int | None = None  # publish time of the first mask stamped after the watch

    def __call__(self, frame: Frame, header: Any, publish_ns: int) -> None:
        if frame.source_id != self.stream:
            return
        self.masks += 1
        self.capture_ms.append((publish_ns - frame.capture_ns) / NS_PER_MS)
        stamp = decode_stamp(frame.image)
        if stamp is None:
            self.unreadable += 1
            return
        self.camera_ms.append((publish_ns - stamp) / NS_PER_MS)
        if self._watch_after_ns is not None and self.found_ns is None and stamp > self._watch_after_ns:
            self.found_ns = publish_ns

    def watch(self, after_ns: int) -> None:
        """From now, note the first mask of a frame the camera sent after ``after_ns``."""
        self._watch_after_ns, self.found_ns = after_ns, None

    def take(self) -> dict[str, Any]:
        """This window's aggregates; starts the next window empty."""
        out = {"masks": self.masks, "stamps_unreadable": self.unreadable,
               "camera_to_publish_ms": percentiles(self.camera_ms),
               "capture_to_publish_ms": percentiles(self.capture_ms)}
        self.camera_ms, self.capture_ms, self.masks, self.unreadable = [], [], 0, 0
        return out


class SubscriberThread:
    """A planner: the reference subscriber in its own thread, taking every mask, so the publisher
    really sends (with nobody subscribed ZeroMQ drops messages before they are serialized)."""

    def __init__(self, address: str, stream: str) -> None:
        self.address, self.stream = address, stream
        self.received = 0
        self.rejected = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="soak-subscriber", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        with MaskSubscriber(self.address, [self.stream]) as subscriber:
            while not self._stop.is_set():
                self.received += len(subscriber.poll(SUBSCRIBER_POLL_S))
                self.rejected = subscriber.rejected

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(SUBSCRIBER_JOIN_S)


class ViewerWatcher:
    """Someone watching the live overlay: ``roadseg watch`` (a WebSocket client of the viewer) in its
    own process, one telemetry line per frame received, counted here, so the hub encodes and sends
    every frame as it would to a browser."""

    def __init__(self, port: int) -> None:
        self.received = 0
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "web_viewer.client", f"http://127.0.0.1:{port}/", "--timeout", str(WATCH_TIMEOUT_S)],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        self._thread = threading.Thread(target=self._count, name="soak-viewer", daemon=True)
        self._thread.start()

    def _count(self) -> None:
        assert self._proc.stdout is not None
        for _ in self._proc.stdout:
            self.received += 1

    @property
    def alive(self) -> bool:
        return self._proc.poll() is None

    def stop(self) -> int | None:
        """Its exit code: None while it was still watching (stopped here), else why it had left."""
        code = self._proc.poll()
        if code is None:
            self._proc.terminate()
            try:
                self._proc.wait(SUBSCRIBER_JOIN_S)
            except subprocess.TimeoutExpired:  # a watcher stuck in a read: do not leave it behind
                self._proc.kill()
                self._proc.wait()
        self._thread.join(SUBSCRIBER_JOIN_S)
        return code


class SoakBench(LiveBench):
    def __init__(self, args: argparse.Namespace) -> None:
        super().__init__(args)
        self.window = WindowRecorder(STREAM)
        self.windows: list[dict[str, Any]] = []  # one per window, never per mask
        self.restarts: list[dict[str, Any]] = []
        self.stalls: list[dict[str, Any]] = []
        self.ongoing: str | None = None  # the fault in progress, if any
        self.window_faults: list[str] = []
        self.subscriber: SubscriberThread | None = None
        self.watcher: ViewerWatcher | None = None
        self._watched = 0  # the watcher's count at the last window's close
        self.end: dict[str, Any] = {}
        self.t0_ns = 0
        self.stopping = False  # no new fault once the last window closed
        self._received = 0  # the subscriber's count at the last window's close

    def observer(self) -> WindowRecorder:  # aggregates instead of keeping a list
        return self.window

    def config(self) -> PipelineConfig:
        config = super().config()
        return dataclasses.replace(config, viewer=("127.0.0.1", 0)) if self.args.viewer else config

    def elapsed_s(self) -> float:
        return (time.monotonic_ns() - self.t0_ns) / NS_PER_S

    # ------------------------------------------------------------------ faults

    def begin_fault(self, kind: str) -> None:
        self.ongoing = kind
        self.window_faults.append(kind)

    async def restart(self) -> dict[str, Any]:
        """SIGKILL (a crashed camera), down ``--down`` s, a new server on the same port; recovered
        at the first mask of a frame sent after the kill."""
        before, at_s = self.status()["reconnects"], self.elapsed_s()
        self.begin_fault("restart")
        kill_ns = time.monotonic_ns()
        self.window.watch(kill_ns)
        self.server.kill()
        await asyncio.sleep(self.args.down)
        error = None
        try:
            await asyncio.to_thread(self.server.start)  # blocks until READY: off the pipeline's loop
        except RuntimeError as exc:
            error = str(exc).splitlines()[0]
        ready_ns = time.monotonic_ns()
        new = None if error else await self.until(lambda: self.window.found_ns, RECOVERY_TIMEOUT_S)
        self.ongoing = None
        added = self.status()["reconnects"] - before
        return {"at_s": round(at_s, 1), "reconnected": new is not None and added > 0,
                "first_new_mask_s": None if new is None else round((new - ready_ns) / NS_PER_S, 3),
                "reconnects_added": added, "error": error}

    async def stall(self) -> dict[str, Any]:
        """SIGSTOP for ``--stall-hold`` s (a hung camera, sockets open), then SIGCONT; recovered at
        the first mask of a frame sent after the SIGCONT."""
        at_s = self.elapsed_s()
        self.begin_fault("stall")
        self.server.pause()
        await asyncio.sleep(self.args.stall_hold)
        resume_ns = time.monotonic_ns()
        self.window.watch(resume_ns)
        self.server.resume()
        new = await self.until(lambda: self.window.found_ns, RECOVERY_TIMEOUT_S)
        self.ongoing = None
        return {"at_s": round(at_s, 1), "held_s": self.args.stall_hold, "recovered": new is not None,
                "first_fresh_mask_s": None if new is None else round((new - resume_ns) / NS_PER_S, 3)}

    async def faults(self, start_s: float) -> None:
        """Restarts and stalls every so often from ``start_s``, half a period in (so the warm-up's
        resource sample is taken before the first one); one at a time."""
        every = {"restart": float(self.args.restart_every), "stall": float(self.args.stall_every)}
        due = {kind: start_s + period / 2 + FAULT_PHASE_S for kind, period in every.items() if period > 0}
        while due:
            kind = min(due, key=lambda k: due[k])
            await asyncio.sleep(max(0.0, due[kind] - self.elapsed_s()))
            if self.stopping:
                return
            if kind == "restart":
                self.restarts.append(await self.restart())
                print("restart", self.restarts[-1], flush=True)
            else:
                self.stalls.append(await self.stall())
                print("stall", self.stalls[-1], flush=True)
            due[kind] += every[kind]

    # ------------------------------------------------------------------ windows

    def close_window(self, index: int, opened_s: float, before: dict[str, Any]) -> dict[str, Any]:
        status, now_s = self.status(), self.elapsed_s()
        dropped = Counter(status["dropped"])
        dropped.subtract(before["dropped"])
        span_s = now_s - opened_s
        window = {"index": index, "t_end_s": round(now_s, 1), "span_s": round(span_s, 2),
                  "faults": sorted(set(self.window_faults)), **self.window.take()}
        window["masks_per_s"] = round(window["masks"] / span_s, 2)
        received = None if self.subscriber is None else self.subscriber.received - self._received
        self._received += received or 0
        watched = None if self.watcher is None else self.watcher.received - self._watched
        self._watched += watched or 0
        window.update({
            "subscriber_received": received,
            "viewer_received": watched,
            "dropped": {cause: n for cause, n in sorted(dropped.items()) if n},
            "reconnects": status["reconnects"], "state": status["state"], "resources": resources()})
        # A fault still in progress belongs to the next window too.
        self.window_faults = [self.ongoing] if self.ongoing else []
        return window

    async def measure(self) -> None:
        args = self.args
        count = max(1, round(args.minutes * 60 / args.window_s))
        faults = asyncio.create_task(self.faults(args.warmup_windows * args.window_s))
        try:
            before, opened_s = self.status(), 0.0
            for index in range(count):
                await asyncio.sleep(max(0.0, (index + 1) * args.window_s - self.elapsed_s()))
                assert self.task is not None
                if self.task.done():
                    self.task.result()
                    raise RuntimeError("the pipeline ended during the soak")
                self.windows.append(self.close_window(index, opened_s, before))
                print("window", json.dumps(self.windows[-1]), flush=True)
                before, opened_s = self.status(), self.elapsed_s()
        finally:
            # A fault under way runs to its recovery (the end is measured on a live stream, and
            # every restart gets its verdict); none starts after this.
            self.stopping = True
            await asyncio.wait([faults], timeout=FAULT_FINISH_S)
            faults.cancel()
            await asyncio.gather(faults, return_exceptions=True)
            self.server.resume()  # nothing if it is not stopped

    async def settle_resources(self) -> dict[str, Any]:
        """Resources at the end, once threads and fds are back near the post-warm-up count or
        ``END_SETTLE_S`` passed (abandoned readers leave when their blocked read times out)."""
        baseline = self.windows[baseline_index(self.args.warmup_windows, len(self.windows))]["resources"]
        deadline = time.monotonic() + END_SETTLE_S
        now = resources()
        while not settled(now, baseline) and time.monotonic() < deadline:
            await asyncio.sleep(SETTLE_POLL_S)
            now = resources()
        now["settle_s"] = round(END_SETTLE_S - max(0.0, deadline - time.monotonic()), 2)
        return now

    async def run(self) -> dict[str, Any]:  # a soak's results, not live's
        async with self.session() as pipeline:
            if not await self.until(lambda: self.window.masks, FIRST_MASK_TIMEOUT_S):
                raise RuntimeError(f"no mask within {FIRST_MASK_TIMEOUT_S:.0f} s (state {self.state()})")
            if self.args.subscriber and pipeline.zmq_address:
                self.subscriber = SubscriberThread(pipeline.zmq_address, STREAM)
                self.subscriber.start()
            if self.args.viewer and pipeline.viewer_port:
                self.watcher = ViewerWatcher(pipeline.viewer_port)
            self.window.take()  # the soak starts now: the first masks' open-time burst is not in it
            self.t0_ns = time.monotonic_ns()
            try:
                await self.measure()
                self.end = await self.settle_resources()
            finally:
                if self.subscriber is not None:
                    self.subscriber.stop()
                viewer = None
                if self.watcher is not None:
                    alive = self.watcher.alive
                    viewer = {"received": self.watcher.received, "connected_at_end": alive,
                              "exit_code": self.watcher.stop()}
        stream = self.summary["streams"][STREAM]
        summary = summarize(self.windows, self.restarts, self.stalls, self.args.warmup_windows, self.end)
        assert self.backend is not None
        return {
            "windows": self.windows, "restarts": self.restarts, "stalls": self.stalls, "end": self.end,
            "summary": summary, "targets": targets(summary),
            "subscriber": None if self.subscriber is None else
            {"received": self.subscriber.received, "rejected": self.subscriber.rejected},
            "viewer": viewer,
            "backend": {"name": self.backend.name, "device": self.backend.device,
                        "precision": self.backend.precision, "model_id": self.backend.model_id},
            "run_summary": {"published": stream["published"], "frames_in": stream["frames_in"],
                            "dropped": stream["dropped"], "unaccounted": stream["unaccounted"],
                            "reconnects": stream["reconnects"], "state": stream["state"],
                            "errors": self.summary["errors"]},
        }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=positive_float, default=30.0, help="how long to soak")
    parser.add_argument("--window-s", type=positive_float, default=60.0, help="one measurement window (s)")
    parser.add_argument("--warmup-windows", type=int, default=2, help="windows left out of the fits")
    add_camera_args(parser)
    parser.add_argument("--restart-every", type=float, default=300.0, help="SIGKILL + restart the camera (s); 0: never")
    parser.add_argument("--stall-every", type=float, default=0.0, help="SIGSTOP/SIGCONT the camera (s); 0: never")
    parser.add_argument("--subscriber", action=argparse.BooleanOptionalAction, default=True,
                        help="a ZeroMQ subscriber (decision_bridge.subscriber) takes every mask")
    parser.add_argument("--viewer", action=argparse.BooleanOptionalAction, default=False,
                        help="serve the viewer on a free loopback port, watched by `roadseg watch` in another process")
    parser.add_argument("--out", type=Path)
    parser.set_defaults(stall_hold=3.0)  # a soak's stall: stopped this long in all (live: after detection)
    args = parser.parse_args(argv)
    check_camera_args(parser, args)
    if args.warmup_windows < 0 or args.restart_every < 0 or args.stall_every < 0:
        parser.error("--warmup-windows, --restart-every and --stall-every must not be negative")
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    omp_effective = quiet_openmp()
    args = parse_args(argv)
    settings = {"minutes": args.minutes, "window_s": args.window_s, "warmup_windows": args.warmup_windows,
                "restart_every_s": args.restart_every, "down_s": args.down, "stall_every_s": args.stall_every,
                "stall_hold_s": args.stall_hold, "subscriber": args.subscriber and args.zmq is not None,
                "viewer": args.viewer}
    results, out = run_and_save("soak", args, argv, settings, omp_effective, SoakBench(args).run)
    print(markdown(results))
    print(f"wrote {out}")
    return results


if __name__ == "__main__":
    main()
