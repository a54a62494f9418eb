"""The viewer under slow and stalled clients, in one run: the pipeline's frame rate with a stalled
WebSocket client against the same run without it (interleaved), JPEG quality tiers on a slow link,
and what each frame costs to encode.

    python -m benchmarks.viewer_stall [--pairs 8] [--window-s 3] [--size 512x256] [--parts stall,tiers,encode]

1. **stall**: one pipeline (demo model, ``synthetic:`` source as fast as it goes, or paced by
   ``--rate`` in live replay mode; viewer on loopback, no ZeroMQ) with one real viewer reading every
   frame (``roadseg watch`` in another process), so the hub encodes every frame in both arms.
   Windows of ``--window-s`` alternate (ABBA) between that alone and that plus a **stalled**
   client: a raw WebSocket that upgrades, then never reads again (4 KiB receive buffer), connected
   before its window, which starts once the server's send to it is blocked (its buffers full;
   ``BLOCKED_S``) and ends before the hub would drop it. Frames published per second are counted
   by a ``Pipeline.observers`` callback; the ratio is stalled fps / baseline fps over all windows
   (target >= 0.95: the issue's "within 5 %"). Each window also records the event loop's longest
   stall and whether the stalled client was indeed blocked in a send (``in_flight`` in
   ``/api/stats``).
2. **tiers**: a hub alone, 960x480 synthetic frames offered at 15 fps, two raw clients: one reading
   freely, one whose link carries ``--slow-rate`` bytes/s for ``--throttle-s``, then reads freely for
   ``--free-s``. Reports the JPEG quality each received (by phase), when the slow one moved down and
   came back to the best tier, their frame rates, and the hub's ``tier_down``/``tier_up``.
3. **encode**: :func:`web_viewer.render.render_frame` per frame: downscale, the mask PNG (the extra
   cost of sending the mask beside the JPEG) and a JPEG per quality tier, in ms and bytes, for
   synthetic frames and (when ``../shared`` has it) a Cityscapes frame at 2048x1024 sent 960 wide.

Results: ``benchmarks/results/viewer-<machine>.json``. Measurements, not tests:
``tests/test_viewer_page.py`` runs a short stall run and asserts only a generous bound.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import socket
import statistics
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np

from models.backends.common import Precision
from models.datasets.synthetic_scene import SyntheticDrive
from stream.config import PipelineConfig
from stream.sources.base import ReplayMode
from tests.conftest import shared_dir
from web_viewer.app import ViewerServer
from web_viewer.clients import picture_tiers
from web_viewer.hub import QUALITY_TIERS, ViewerHub
from web_viewer.render import HEADER_LEN, render_frame

ROOT = Path(__file__).resolve().parent.parent
# A stalled client connects before its window, which starts once the server's send to it has been blocked
# for BLOCKED_S (its buffers are full: about 0.6 MB, SO_SNDBUF and the transport's) or after SETTLE_MAX_S.
BLOCKED_S = 0.3
SETTLE_MAX_S = 6.0  # < the hub's 10 s send deadline minus a window
WARMUP_S = 3.0  # published frames for this long before the first window (model warm, the reader connected)
TICK_S = 0.01  # event-loop stall sampling
CHUNK = 4096  # bytes per read of the raw client
STALLED_RCVBUF = 4096
PARTS = ("stall", "tiers", "encode")


def machine_name() -> str:
    from benchmarks.report import machine_name as name  # imports torch: after OMP_WAIT_POLICY is set

    return name()


def default_out() -> Path:
    return ROOT / "benchmarks" / "results" / f"viewer-{machine_name()}.json"


# ---------------------------------------------------------------- a WebSocket client on a bare socket


def _handshake(port: int, token: str | None) -> bytes:
    key = base64.b64encode(os.urandom(16)).decode()
    auth = f"Authorization: Bearer {token}\r\n" if token else ""
    return (f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n{auth}\r\n").encode()


async def open_raw(port: int, *, rcvbuf: int, token: str | None = None) -> tuple[socket.socket, bytes]:
    """A connected, upgraded socket and the bytes that came after the 101 response's headers."""
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)  # before connect: the window is negotiated
    sock.setblocking(False)
    await loop.sock_connect(sock, ("127.0.0.1", port))
    await loop.sock_sendall(sock, _handshake(port, token))
    head = b""
    while b"\r\n\r\n" not in head:
        data = await asyncio.wait_for(loop.sock_recv(sock, 1), 10)  # one byte at a time: no frame is read
        if not data:
            raise ConnectionError(f"the viewer closed during the handshake: {head!r}")
        head += data
    if not head.startswith(b"HTTP/1.1 101"):
        raise ConnectionError(f"no WebSocket upgrade: {head.splitlines()[0]!r}")
    return sock, b""


async def stalled_client(port: int) -> socket.socket:
    """Upgrades, then never reads again: the server's sends to it block once its buffers are full."""
    sock, _ = await open_raw(port, rcvbuf=STALLED_RCVBUF)
    return sock


@dataclass
class RawViewerClient:
    """Reads the viewer's frames at most ``rate_bps`` bytes/s (None: as fast as it can), answers pings,
    and records (time, seq, quality, bytes) of every frame: a slow link, byte by byte."""

    port: int
    rate_bps: float | None = None
    rcvbuf: int = 16384
    token: str | None = None
    frames: list[tuple[float, int, int | None, int]] = field(default_factory=list)
    closed: bool = False
    _sock: socket.socket | None = None
    _buf: bytearray = field(default_factory=bytearray)

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        self._sock, rest = await open_raw(self.port, rcvbuf=self.rcvbuf, token=self.token)
        self._buf += rest
        try:
            while not self.closed:
                data = await loop.sock_recv(self._sock, CHUNK)
                if not data:
                    break
                self._buf += data
                self._parse()
                if self.rate_bps:
                    await asyncio.sleep(len(data) / self.rate_bps)
        except (ConnectionError, OSError):
            pass
        finally:
            self.closed = True
            self._sock.close()

    def _parse(self) -> None:
        while True:
            frame = _next_frame(self._buf)
            if frame is None:
                return
            opcode, payload, used = frame
            del self._buf[:used]
            if opcode == 0x2:
                (length,) = HEADER_LEN.unpack_from(payload)
                header = json.loads(payload[HEADER_LEN.size : HEADER_LEN.size + length])
                self.frames.append((time.monotonic(), int(header["seq"]), header.get("quality"), len(payload)))
            elif opcode == 0x9 and self._sock is not None:  # ping: pong, or the server drops us in 2.5 s
                self._sock.send(_masked(0xA, payload))
            elif opcode == 0x8:
                self.closed = True
                return


def _next_frame(buf: bytearray) -> tuple[int, bytes, int] | None:
    """(opcode, payload, bytes used) of the first whole server frame in ``buf`` (unmasked, unfragmented)."""
    if len(buf) < 2:
        return None
    opcode, length, at = buf[0] & 0x0F, buf[1] & 0x7F, 2
    if length == 126:
        if len(buf) < 4:
            return None
        (length,), at = struct.unpack_from(">H", buf, 2), 4
    elif length == 127:
        if len(buf) < 10:
            return None
        (length,), at = struct.unpack_from(">Q", buf, 2), 10
    if len(buf) < at + length:
        return None
    return opcode, bytes(buf[at : at + length]), at + length


def _masked(opcode: int, payload: bytes) -> bytes:
    key = os.urandom(4)
    body = bytes(b ^ key[i % 4] for i, b in enumerate(payload))
    return bytes((0x80 | opcode, 0x80 | len(payload))) + key + body


# ---------------------------------------------------------------- 1. stalled client vs none


class LoopStall:
    """The event loop's longest delay in waking a sleeper, since the last reset."""

    def __init__(self) -> None:
        self.worst = 0.0

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            before = loop.time()
            await asyncio.sleep(TICK_S)
            self.worst = max(self.worst, loop.time() - before - TICK_S)


async def stall(pairs: int, window_s: float, size: str, model: str, rate: float | None = None) -> dict[str, Any]:
    """``rate``: replay the source at this many frames/s (None: as fast as it goes)."""
    from tests.pipeline_helpers import running, wait_for  # imports torch: after OMP_WAIT_POLICY is set

    config = PipelineConfig(sources=(f"cam=synthetic:seed=1,size={size},frames=10000000",), model=model,
                            precision=Precision.FP32, zmq_address=None, viewer=("127.0.0.1", 0),
                            stats_interval_s=0, auto_max_batch=True,  # batch size as roadseg run picks it
                            # paced: on time like a camera (a slow start must not be caught up later at full speed)
                            replay_rate=rate, replay_mode=ReplayMode.LIVE if rate else ReplayMode.LOSSLESS)
    published = 0

    def count(*_: Any) -> None:
        nonlocal published
        published += 1

    windows: list[dict[str, Any]] = []
    async with running(config) as (pipeline, task), aiohttp.ClientSession() as session:
        await wait_for(lambda: pipeline.viewer_port is not None or task.done(), timeout_s=120, what="viewer")
        if task.done():
            task.result()
        port = pipeline.viewer_port
        assert port is not None
        pipeline.observers.append(count)
        reader = subprocess.Popen([sys.executable, "-m", "web_viewer.client", f"http://127.0.0.1:{port}/",
                                   "--timeout", "300"], cwd=ROOT, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL)
        loop_stall = LoopStall()
        ticker = asyncio.create_task(loop_stall.run())

        async def stats() -> dict[str, Any]:
            async with session.get(f"http://127.0.0.1:{port}/api/stats") as resp:
                result: dict[str, Any] = await resp.json()
                return result

        try:
            await wait_for(lambda: published >= 1 or task.done(), timeout_s=120, what="the first frame")
            if task.done():
                raise RuntimeError(f"the pipeline ended during warm-up: {task.result()}")
            await asyncio.sleep(WARMUP_S)
            deadline = time.monotonic() + 60
            while (await stats())["frames_sent"] < 10:  # the reader is connected and reading
                assert time.monotonic() < deadline and reader.poll() is None, "the reader never read"
                await asyncio.sleep(0.1)
            for index in range(pairs):
                for stalled in ((False, True) if index % 2 == 0 else (True, False)):  # ABBA: drift cancels
                    windows.append(await _window(port, stalled, window_s, lambda: published, loop_stall, stats))
                    print(f"viewer_stall: window {len(windows)}: {windows[-1]}", file=sys.stderr, flush=True)
        finally:
            ticker.cancel()
            reader.terminate()
            reader.wait(10)
            pipeline.stop()
    return _stall_summary(windows, pairs, window_s, size, model, rate)


async def _window(port: int, stalled: bool, window_s: float, frames: Any, loop_stall: LoopStall,
                  stats: Any) -> dict[str, Any]:
    sock = await stalled_client(port) if stalled else None
    try:
        settle = await _until_blocked(stats) if stalled else 0.0
        loop = asyncio.get_running_loop()
        start_frames, start = frames(), loop.time()
        loop_stall.worst = 0.0
        await asyncio.sleep(window_s)
        count, elapsed = frames() - start_frames, loop.time() - start
        clients = (await stats())["per_client"]
        blocked = sum(1 for client in clients if client["in_flight"])
    finally:
        if sock is not None:
            sock.close()
    await asyncio.sleep(0.3)  # the server notices the closed socket and frees its slot
    return {"stalled": stalled, "frames": count, "seconds": round(elapsed, 3), "fps": round(count / elapsed, 2),
            "max_loop_stall_ms": round(loop_stall.worst * 1000, 1), "clients": len(clients),
            "clients_blocked_in_send": blocked, "settle_s": round(settle, 2)}


async def _until_blocked(stats: Any) -> float:
    """Seconds until the newest client (the stalled one) has been stuck in one send for BLOCKED_S."""
    start = time.monotonic()
    seen: tuple[int, int] | None = None  # (client id, frames sent) when first seen blocked
    since = start
    while time.monotonic() - start < SETTLE_MAX_S:
        clients = (await stats())["per_client"]
        newest = max(clients, key=lambda c: c["id"]) if clients else None
        state = (newest["id"], newest["sent"]) if newest and newest["in_flight"] else None
        if state is None or state != seen:
            seen, since = state, time.monotonic()
        elif time.monotonic() - since >= BLOCKED_S:
            break
        await asyncio.sleep(0.05)
    return time.monotonic() - start


def _stall_summary(windows: list[dict[str, Any]], pairs: int, window_s: float, size: str, model: str,
                   rate: float | None) -> dict[str, Any]:
    def fps_of(stalled: bool) -> float:
        chosen = [w for w in windows if w["stalled"] is stalled]
        return sum(w["frames"] for w in chosen) / sum(w["seconds"] for w in chosen)

    def ratio(num: float, den: float) -> float | None:  # None: the pipeline published nothing meanwhile
        return round(num / den, 3) if den > 0 else None

    pair_ratios = []
    for index in range(pairs):
        a, b = windows[2 * index], windows[2 * index + 1]
        stalled, alone = (a, b) if a["stalled"] else (b, a)
        pair_ratios.append(ratio(stalled["fps"], alone["fps"]))
    baseline, with_stalled = fps_of(False), fps_of(True)
    known = [r for r in pair_ratios if r is not None]
    return {
        "settings": {"pairs": pairs, "window_s": window_s, "source": f"synthetic:seed=1,size={size}",
                     "rate": rate or "as fast as it goes",
                     "model": model, "blocked_s": BLOCKED_S, "stalled_rcvbuf": STALLED_RCVBUF},
        "baseline_fps": round(baseline, 2),
        "stalled_fps": round(with_stalled, 2),
        "fps_ratio": ratio(with_stalled, baseline),
        "pair_ratios": pair_ratios,
        "median_pair_ratio": round(statistics.median(known), 3) if known else None,
        "target": ">= 0.95",
        "windows": windows,
    }


# ---------------------------------------------------------------- 2. quality tiers on a slow link


async def tiers(slow_rate: float, throttle_s: float, free_s: float) -> dict[str, Any]:
    drive = SyntheticDrive(1, 960, 480, 15.0)
    frames = [drive.render(i) for i in range(30)]
    hub = ViewerHub()
    server = ViewerServer(hub, "127.0.0.1", 0)
    port = await server.start()
    fast, slow = RawViewerClient(port), RawViewerClient(port, rate_bps=slow_rate)

    async def feed() -> None:
        seq = 0
        while True:
            image, truth = frames[seq % len(frames)]
            hub.offer("cam", image, truth, {"seq": seq})
            seq += 1
            await asyncio.sleep(1 / 15)

    feeder = asyncio.create_task(feed())
    clients = [asyncio.create_task(fast.run()), asyncio.create_task(slow.run())]
    start = time.monotonic()
    try:
        await asyncio.sleep(throttle_s)
        freed = time.monotonic()
        slow.rate_bps = None
        await asyncio.sleep(free_s)
        stats = hub.stats
    finally:
        fast.closed = slow.closed = True
        feeder.cancel()
        for task in clients:
            task.cancel()
        await server.close()
        await hub.close()
    return {
        "settings": {"frame": "960x480 synthetic", "offered_fps": 15, "slow_rate_bytes_per_s": slow_rate,
                     "throttle_s": throttle_s, "free_s": free_s, "qualities": list(QUALITY_TIERS)},
        "fast": _client_summary(fast, start, freed),
        "slow": _client_summary(slow, start, freed),
        "tier_down": stats["tier_down"],
        "tier_up": stats["tier_up"],
        "encode": stats["encode"],
    }


def _client_summary(client: RawViewerClient, start: float, freed: float) -> dict[str, Any]:
    def phase(lo: float, hi: float) -> dict[str, Any]:
        chosen = [f for f in client.frames if lo <= f[0] < hi]
        span = hi - lo
        return {"frames": len(chosen), "fps": round(len(chosen) / span, 2) if span > 0 else None,
                "qualities": {str(q): sum(1 for f in chosen if f[2] == q) for q in QUALITY_TIERS},
                "kbytes_per_frame": round(statistics.mean(f[3] for f in chosen) / 1024, 1) if chosen else None}

    end = client.frames[-1][0] if client.frames else freed
    first_down = next((f[0] - start for f in client.frames if f[2] != QUALITY_TIERS[0]), None)
    # back to the best tier for good: after the last frame of a lower quality (once the link is free)
    lower_after = [f[0] for f in client.frames if f[0] >= freed and f[2] != QUALITY_TIERS[0]]
    best_again = next((f[0] - freed for f in client.frames if f[0] >= freed and f[2] == QUALITY_TIERS[0]
                       and (not lower_after or f[0] > lower_after[-1])), None)
    return {"throttled": phase(start, freed), "free": phase(freed, end + 1e-9),
            "first_lower_quality_s": None if first_down is None else round(first_down, 2),
            "best_quality_again_after_free_s": None if best_again is None else round(best_again, 2)}


# ---------------------------------------------------------------- 3. encode cost per frame


def _cases() -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
    for width, height in ((256, 128), (512, 256), (960, 480)):
        image, truth = SyntheticDrive(1, width, height, 15.0).render(5)
        yield f"synthetic {width}x{height}", image, truth
    root = shared_dir() / "cityscapes"
    images = sorted((root / "leftImg8bit" / "val").glob("*/*_leftImg8bit.png"))
    if images:
        from models.datasets.cityscapes import read_cityscapes_truth, read_rgb

        image = read_rgb(images[0])
        label = Path(str(images[0]).replace("leftImg8bit", "gtFine").replace(".png", "_labelIds.png"))
        truth = read_cityscapes_truth(label, image.shape[:2])
        yield "cityscapes 2048x1024 (sent 960x480)", image, truth


def encode(reps: int) -> dict[str, Any]:
    out = {}
    for name, image, mask in _cases():
        pictures = picture_tiers(QUALITY_TIERS, 960, small_picture=True)
        runs = [render_frame("c", i, image, mask, {"seq": i}, pictures=pictures) for i in range(reps + 3)][3:]
        jpeg = {p.label(960): {"ms": round(statistics.median(r.jpeg_ms[p] for r in runs), 3),
                               "bytes": runs[0].jpeg_bytes[p]} for p in pictures}
        mask_ms = statistics.median(r.mask_ms for r in runs)
        best = jpeg[str(QUALITY_TIERS[0])]
        out[name] = {
            "resize_ms": round(statistics.median(r.resize_ms for r in runs), 3),
            "mask_png_ms": round(mask_ms, 3),
            "mask_png_bytes": runs[0].mask_bytes,
            "jpeg": jpeg,
            # what sending the mask adds to a frame sent at the best quality (before: downscale + JPEG)
            "mask_extra_time": round(mask_ms / (best["ms"] + statistics.median(r.resize_ms for r in runs)), 3),
            "mask_extra_bytes": round(runs[0].mask_bytes / best["bytes"], 3),
        }
    return {"reps": reps, "cases": out}


# ---------------------------------------------------------------- main


def parse_parts(text: str) -> tuple[str, ...]:
    parts = tuple(part.strip() for part in text.split(",") if part.strip())
    unknown = sorted(set(parts) - set(PARTS))
    if unknown or not parts:
        raise argparse.ArgumentTypeError(f"parts: choose from {','.join(PARTS)}; got {text!r}")
    return parts


async def measure(args: argparse.Namespace) -> dict[str, Any]:
    omp_effective = "torch" not in sys.modules
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    result: dict[str, Any] = {"machine": machine_name(), "command": " ".join(["python -m benchmarks.viewer_stall",
                                                                                 *sys.argv[1:]]),
                              "omp_wait_policy": os.environ["OMP_WAIT_POLICY"], "omp_policy_applies": omp_effective}
    with contextlib.suppress(OSError):
        result["loadavg_1min_before"] = os.getloadavg()[0]
    if "encode" in args.parts:
        result["encode"] = encode(args.reps)
    if "tiers" in args.parts:
        result["tiers"] = await tiers(args.slow_rate, args.throttle_s, args.free_s)
    if "stall" in args.parts:
        result["stall"] = await stall(args.pairs, args.window_s, args.size, args.model, args.rate)
    with contextlib.suppress(OSError):
        result["loadavg_1min_after"] = os.getloadavg()[0]
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parts", type=parse_parts, default=PARTS, help="comma-separated: stall,tiers,encode")
    parser.add_argument("--pairs", type=int, default=8, help="stall: pairs of windows (alone, stalled)")
    parser.add_argument("--window-s", type=float, default=3.0, help="stall: seconds per window (< 10: the "
                                                                    "hub drops a client stalled that long)")
    parser.add_argument("--size", default="512x256", help="stall: the synthetic source's frame size")
    parser.add_argument("--rate", type=float, default=None, metavar="FPS",
                        help="stall: replay the source at FPS (default: as fast as it goes, the sensitive case)")
    parser.add_argument("--model", default="demo")
    parser.add_argument("--slow-rate", type=float, default=400_000, help="tiers: the slow link, bytes/s")
    parser.add_argument("--throttle-s", type=float, default=8.0)
    parser.add_argument("--free-s", type=float, default=10.0)
    parser.add_argument("--reps", type=int, default=30, help="encode: frames timed per case")
    parser.add_argument("--out", type=Path, default=None, help="results JSON (default benchmarks/results/"
                                                               "viewer-<machine>.json)")
    args = parser.parse_args(argv)
    # As `roadseg run` does, before torch loads OpenMP (its spinning workers turn contention for the cores
    # into long stalls); no effect when torch is already loaded, which the results say.
    result = asyncio.run(measure(args))
    out = args.out or default_out()
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    brief = {"stall_fps_ratio": result.get("stall", {}).get("fps_ratio"),
             "tier_down": result.get("tiers", {}).get("tier_down"), "tier_up": result.get("tiers", {}).get("tier_up")}
    print(json.dumps(brief))
    return 0


if __name__ == "__main__":
    sys.exit(main())
