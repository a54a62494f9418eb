"""The viewer on slow links: how late frames arrive, and whether the viewer stays connected.

    python -m benchmarks.viewer_link [--rates 600000,300000,150000,60000,30000] [--seconds 20]
                                     [--arms shipped,full_size]

A hub and a real viewer server on loopback; 960x480 synthetic frames offered at 15 fps; one raw
WebSocket client (:class:`benchmarks.viewer_stall.RawViewerClient`) whose link carries ``RATE``
bytes/s: it reads at most that fast through a 16 KiB receive buffer, so everything the server
queues waits on the server's side, as behind a real slow link. Per frame received, its *lag* is
receive time minus the time the frame was offered to the hub (one clock: one process). After
``SETTLE_S`` (the quality tier has time to settle), each arm reports lag p50/p90/max, frames/s,
KiB per frame and whether the client was still connected at the end (a pong that waits behind
queued frames for longer than half the heartbeat drops it).

Arms per rate, interleaved (``--arms``; the first is compared with the second):

* ``shipped``: the viewer as it ships: at most ``TCP_NOTSENT_LOWAT`` unsent bytes in the kernel, a
  small transport buffer, every send waits for it to drain
  (:func:`web_viewer.app.bound_send_queue`), and quality tiers ending in a half-width picture;
* ``full_size``: the same without the half-width tier (quality 40 at full size is the last);
* ``sndbuf``: the send path before the bounded queue (a 256 KiB ``SO_SNDBUF``, which Linux
  doubles, and aiohttp's default 64 KiB writer limit), rebuilt here, without the half-width tier.

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
ARMS = ("shipped", "full_size", "sndbuf")
DEFAULT_ARMS = "shipped,full_size"
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


async def one_link(rate: float, seconds: float, *, small_picture: bool = True) -> dict[str, Any]:
    drive = SyntheticDrive(1, *FRAME_SIZE, OFFER_FPS)
    frames = [drive.render(i) for i in range(30)]
    hub = ViewerHub(small_picture=small_picture)
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


async def run_arm(arm: str, rate: float, seconds: float) -> dict[str, Any]:
    if arm == "sndbuf":
        with previous_buffers():
            return await one_link(rate, seconds, small_picture=False)
    return await one_link(rate, seconds, small_picture=arm == "shipped")


async def measure(rates: list[float], seconds: float, rounds: int, arms: Sequence[str]) -> dict[str, Any]:
    runs: dict[str, dict[str, list[dict[str, Any]]]] = {str(int(r)): {arm: [] for arm in arms} for r in rates}
    for round_index in range(rounds):
        for rate in rates:
            order = arms if round_index % 2 == 0 else arms[::-1]  # ABBA: drift hits every arm alike
            for arm in order:
                result = await run_arm(arm, rate, seconds)
                runs[str(int(rate))][arm].append(result)
                print(f"rate {rate / 1000:.0f} kB/s {arm}: {json.dumps(result)}", file=sys.stderr)
    return {rate: {arm: {"runs": by_arm[arm], **(ratio_of(by_arm, arms) if arm == arms[0] else {})}
                   for arm in arms} for rate, by_arm in runs.items()}


def ratio_of(by_arm: dict[str, list[dict[str, Any]]], arms: Sequence[str]) -> dict[str, Any]:
    """Median lag p50 of the first arm over the second's, and the same for frames/s (None where a
    side got no frame or there is no second arm)."""
    def median(arm: str, key: str) -> float | None:
        values = [r[key] for r in by_arm[arm] if r[key] is not None]
        return statistics.median(values) if values else None

    if len(arms) < 2:
        return {}
    out = {}
    for key, name in (("lag_p50_s", "lag_p50_ratio"), ("fps", "fps_ratio")):
        new, old = median(arms[0], key), median(arms[1], key)
        out[f"{name}_to_{arms[1]}"] = round(new / old, 3) if new and old else None
    return out


def markdown(results: dict[str, Any]) -> str:
    rows = ["| link | send path | connected | frames/s | lag p50 | lag p90 | lag max | KiB/frame |",
            "|---|---|---|---|---|---|---|---|"]
    for rate, arms in results.items():
        for arm, result in arms.items():
            for run in result["runs"]:
                rows.append(f"| {int(rate) // 1000} kB/s | {arm} | {'yes' if run['connected_at_end'] else 'no'} | "
                            f"{run['fps']} | {run['lag_p50_s']} s | {run['lag_p90_s']} s | {run['lag_max_s']} s | "
                            f"{run['kib_per_frame']} |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rates", default="600000,300000,150000,60000,30000",
                        help="link rates, bytes/s, comma-separated")
    parser.add_argument("--arms", default=DEFAULT_ARMS, help=f"comma-separated, from {', '.join(ARMS)}")
    parser.add_argument("--seconds", type=float, default=20.0, help="per run (> SETTLE_S)")
    parser.add_argument("--rounds", type=int, default=1, help="runs per rate and arm")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    rates = [float(r) for r in args.rates.split(",") if r.strip()]
    if not rates or any(r <= 0 for r in rates) or args.seconds <= SETTLE_S:
        parser.error(f"--rates must be positive numbers and --seconds more than {SETTLE_S}")
    arms = [a.strip() for a in args.arms.split(",") if a.strip()]
    if not arms or any(a not in ARMS for a in arms) or len(set(arms)) != len(arms):
        parser.error(f"--arms {args.arms!r}: distinct names from {', '.join(ARMS)}")
    results = asyncio.run(measure(rates, args.seconds, args.rounds, arms))
    out = args.out or ROOT / "benchmarks" / "results" / f"viewer-link-{'-'.join(arms)}-{machine_name()}.json"
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
