"""The viewer on slow links: how late frames arrive, and whether the viewer stays connected.

    python -m benchmarks.viewer_link [--rates 600000,300000,150000,60000] [--seconds 20]

A hub and a real viewer server on loopback; 960x480 synthetic frames offered at 15 fps; one raw
WebSocket client (:class:`benchmarks.viewer_stall.RawViewerClient`) whose link carries ``RATE``
bytes/s: it reads at most that fast through a 16 KiB receive buffer, so everything the server
queues waits on the server's side, as behind a real slow link. Per frame received, its *lag* is
receive time minus the time the frame was offered to the hub (one clock: one process). After
``SETTLE_S`` (the quality tier has time to settle), each arm reports lag p50/p90/max, frames/s,
KiB per frame and whether the client was still connected at the end (a pong that waits behind
queued frames for longer than half the heartbeat drops it).

Two arms per rate, interleaved: ``bounded``, the viewer as it ships (at most ``TCP_NOTSENT_LOWAT``
unsent bytes in the kernel, a small transport buffer, every send waits for it to drain:
:func:`web_viewer.app.bound_send_queue`), and ``sndbuf``, the viewer before that change (a 256 KiB
``SO_SNDBUF``, which Linux doubles, and aiohttp's default 64 KiB writer limit), rebuilt here.
The ratio of their lags is measured in one run; no test asserts a speed.

Results: ``benchmarks/results/viewer-link-<machine>.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import statistics
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from benchmarks.viewer_stall import RawViewerClient, machine_name
from models.datasets.synthetic_scene import SyntheticDrive
from web_viewer import app
from web_viewer.app import ViewerServer
from web_viewer.hub import ViewerHub

ROOT = Path(__file__).resolve().parent.parent
FRAME_SIZE = (960, 480)  # the hub sends at most 960 wide: the size a viewer gets of any camera
OFFER_FPS = 15.0
SETTLE_S = 5.0  # tier changes take a few slow sends: lag is measured after this
ARMS = ("bounded", "sndbuf")
OLD_SNDBUF_BYTES = 256 * 1024  # the previous bound (the kernel doubles it: 512 KiB queued)
OLD_WRITER_LIMIT = 64 * 1024  # aiohttp's default: it waits for a drain only every 64 KiB sent


@contextmanager
def previous_buffers() -> Iterator[None]:
    """The viewer's send path as it was before the bounded queue: for the comparison arm only."""
    def old(ws: Any, transport: Any) -> None:
        sock = ws.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, OLD_SNDBUF_BYTES)

    saved = app.bound_send_queue, app.WS_WRITER_LIMIT_BYTES
    app.bound_send_queue, app.WS_WRITER_LIMIT_BYTES = old, OLD_WRITER_LIMIT
    try:
        yield
    finally:
        app.bound_send_queue, app.WS_WRITER_LIMIT_BYTES = saved


async def one_link(rate: float, seconds: float) -> dict[str, Any]:
    drive = SyntheticDrive(1, *FRAME_SIZE, OFFER_FPS)
    frames = [drive.render(i) for i in range(30)]
    hub = ViewerHub()
    server = ViewerServer(hub, "127.0.0.1", 0)
    port = await server.start()
    client = RawViewerClient(port, rate_bps=rate)
    offered: dict[int, float] = {}

    async def feed() -> None:
        seq = 0
        while True:
            image, truth = frames[seq % len(frames)]
            offered[seq] = time.monotonic()
            hub.offer("cam", image, truth, {"seq": seq})
            seq += 1
            await asyncio.sleep(1 / OFFER_FPS)

    feeder, reader = asyncio.create_task(feed()), asyncio.create_task(client.run())
    start = time.monotonic()
    try:
        await asyncio.sleep(seconds)
        connected = not client.closed
    finally:
        client.closed = True
        feeder.cancel()
        reader.cancel()
        await server.close()
        await hub.close()
    return summary(client.frames, offered, start, start + seconds, connected)


def summary(frames: Sequence[tuple[float, int, int | None, int]], offered: dict[int, float], start: float,
            end: float, connected: bool) -> dict[str, Any]:
    """Lag and rate of the frames received from ``SETTLE_S`` after ``start`` to ``end``: (receive
    time, seq, quality, bytes) each."""
    lo = start + SETTLE_S
    chosen = [f for f in frames if lo <= f[0] < end]
    lags = sorted(f[0] - offered[f[1]] for f in chosen)

    def at(q: float) -> float | None:
        return round(lags[min(len(lags) - 1, int(q * len(lags)))], 3) if lags else None

    return {"connected_at_end": connected, "frames": len(chosen), "fps": round(len(chosen) / (end - lo), 2),
            "lag_p50_s": at(0.5), "lag_p90_s": at(0.9), "lag_max_s": round(lags[-1], 3) if lags else None,
            "kib_per_frame": round(statistics.mean(f[3] for f in chosen) / 1024, 1) if chosen else None,
            "last_frame_s": round(frames[-1][0] - start, 2) if frames else None}


async def measure(rates: list[float], seconds: float, rounds: int) -> dict[str, Any]:
    runs: dict[str, dict[str, list[dict[str, Any]]]] = {str(int(r)): {arm: [] for arm in ARMS} for r in rates}
    for round_index in range(rounds):
        for rate in rates:
            order = ARMS if round_index % 2 == 0 else ARMS[::-1]  # ABBA: drift hits both arms alike
            for arm in order:
                if arm == "bounded":
                    result = await one_link(rate, seconds)
                else:
                    with previous_buffers():
                        result = await one_link(rate, seconds)
                runs[str(int(rate))][arm].append(result)
                print(f"rate {rate / 1000:.0f} kB/s {arm}: {json.dumps(result)}", file=sys.stderr)
    return {rate: {arm: {"runs": arms[arm], **ratio_of(arms)} if arm == "bounded" else {"runs": arms[arm]}
                   for arm in ARMS} for rate, arms in runs.items()}


def ratio_of(arms: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Median lag p50 of the bounded arm over the previous one's (None where a side got no frame)."""
    def median_p50(arm: str) -> float | None:
        values = [r["lag_p50_s"] for r in arms[arm] if r["lag_p50_s"] is not None]
        return statistics.median(values) if values else None

    new, old = median_p50("bounded"), median_p50("sndbuf")
    return {"lag_p50_ratio_to_previous": round(new / old, 3) if new and old else None}


def markdown(results: dict[str, Any]) -> str:
    rows = ["| link | send path | connected | frames/s | lag p50 | lag p90 | lag max | KiB/frame |",
            "|---|---|---|---|---|---|---|---|"]
    for rate, arms in results.items():
        for arm in ARMS:
            for run in arms[arm]["runs"]:
                rows.append(f"| {int(rate) // 1000} kB/s | {arm} | {'yes' if run['connected_at_end'] else 'no'} | "
                            f"{run['fps']} | {run['lag_p50_s']} s | {run['lag_p90_s']} s | {run['lag_max_s']} s | "
                            f"{run['kib_per_frame']} |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rates", default="600000,300000,150000,60000", help="link rates, bytes/s, comma-separated")
    parser.add_argument("--seconds", type=float, default=20.0, help="per run (> SETTLE_S)")
    parser.add_argument("--rounds", type=int, default=1, help="runs per rate and arm")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    rates = [float(r) for r in args.rates.split(",") if r.strip()]
    if not rates or any(r <= 0 for r in rates) or args.seconds <= SETTLE_S:
        parser.error(f"--rates must be positive numbers and --seconds more than {SETTLE_S}")
    results = asyncio.run(measure(rates, args.seconds, args.rounds))
    out = args.out or ROOT / "benchmarks" / "results" / f"viewer-link-{machine_name()}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    settings = {"frame": f"{FRAME_SIZE[0]}x{FRAME_SIZE[1]} synthetic", "offered_fps": OFFER_FPS,
                "seconds": args.seconds, "settle_s": SETTLE_S, "rounds": args.rounds}
    command = " ".join(["python -m benchmarks.viewer_link", *(argv if argv is not None else sys.argv[1:])])
    out.write_text(json.dumps({"machine": machine_name(), "command": command, "settings": settings,
                               "links": results}, indent=2) + "\n")
    print(markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
