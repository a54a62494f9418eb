"""Subscription flood: pipeline frame rate, memory and event-loop stalls with and without a peer
sending 30k subscriptions of 1 KB (issue 10's hostile peer), interleaved in one run.

    python -m benchmarks.flood [--rounds 3]

ZeroMQ hangs up on a subscription longer than any topic (MAXMSGSIZE), the publisher applies only
prefixes of topics it can send (XPUB_MANUAL) and reads subscriptions on its own thread. Targets:
frame-rate ratio >= 0.9 and peak memory < 50 MB more, measured here rather than in a timed test.
The pipeline's own allocations move RSS by 100 MB either way within a run, so the flood's memory is
also measured on the publisher alone (``publisher_only``, first, in a fresh process): that is the
number the test checks.
The flooder runs on the same two cores, re-dialling and re-sending its 30 MB every time ZeroMQ
hangs up on it, at ``nice 19``: a real attacker's CPU is on another host, and on two shared cores
its own work (about a core, see ``flooder_cpu_s``) would otherwise be counted as our slowdown
(ratio 0.75 at equal priority, 0.99 niced). What the service itself spends on the flood (reading
and refusing it, kernel TCP work included) is still measured.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from decision_bridge.io_thread import PublisherThread
from decision_bridge.publisher import MaskPublisher
from decision_bridge.subscriber import MaskSubscriber
from models.backends.common import Precision
from stream.config import PipelineConfig
from tests.pipeline_helpers import LOOPBACK_ANY, running, wait_for

FLOOD = 30_000
FLOOD_BYTES = 1024
FLOODER = textwrap.dedent("""
    import os, sys, time, zmq
    address, count, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    ctx = zmq.Context(); sock = ctx.socket(zmq.SUB); sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.SNDHWM, 0)  # no limit: every subscription goes out
    sock.connect(address)
    for i in range(count):  # prefixes of no topic the publisher sends
        sock.setsockopt(zmq.SUBSCRIBE, b"mask/x" + i.to_bytes(4, "big") + os.urandom(size - 10))
    print("flooded", flush=True)
    time.sleep(600)  # stays connected (ZeroMQ re-dials and re-sends whenever it is hung up on)
""")
RSS_SAMPLE_S = 0.02
# RSS grows by 150-250 MB over a run's first masks (batches growing to full size, allocator arenas:
# the amount varies run to run) and is flat from about the 50th on: the flood and the memory
# baseline start after this many masks, so that growth is not mistaken for the flood's.
SETTLED_MASKS = 60
FRAMES = 150
FLOODER_NICE = 19
# The publisher alone, flooded for this long after the flooder has sent everything once (ZeroMQ
# hangs up on it and it re-sends, so the flood goes on): long enough for several rounds of it.
PUBLISHER_FLOOD_S = 4.0
FIELDS = ("fps", "rss_growth_mb", "max_loop_stall_s", "refused", "flooder_cpu_s")


def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of a running process."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def run_once(flood: int) -> tuple[float, float, float, int, float]:
    """(frames/s, peak RSS growth MB while flooded, longest event-loop stall s, subscriptions the
    publisher read and refused, the flooder's CPU s). A real subscriber joins before frame 0; the flooder (another
    process) starts once the pipeline's memory has settled (:data:`SETTLED_MASKS`) and floods until the
    run ends; memory is measured from that moment."""
    config = PipelineConfig(sources=(f"cam=synthetic:seed=3,size=256x128,frames={FRAMES}",), model="demo",
                            precision=Precision.FP32, zmq_address=LOOPBACK_ANY, zmq_wait_subscriber_s=60.0,
                            viewer=None, stats_interval_s=0)
    stall = 0.0
    rss_before = peak = 0.0

    async def ticker() -> None:
        nonlocal stall, peak
        loop = asyncio.get_running_loop()
        while True:
            before = loop.time()
            await asyncio.sleep(RSS_SAMPLE_S)
            stall = max(stall, loop.time() - before - RSS_SAMPLE_S)
            if rss_before:
                peak = max(peak, _rss_mb())

    async with running(config) as (pipeline, task):
        await wait_for(lambda: pipeline.zmq_address is not None, what="publisher bind")
        address = str(pipeline.zmq_address)
        subscriber = MaskSubscriber(address, ["cam"])
        subscriber.connect()
        await wait_for(lambda: pipeline.telemetry.frames >= SETTLED_MASKS or task.done(), timeout_s=120,
                       what="the pipeline to settle")
        rss_before = peak = _rss_mb()
        ticking = asyncio.create_task(ticker())
        flooder = _start_flooder(address, flood)
        flooder_cpu = 0.0
        try:
            summary = await asyncio.wait_for(task, 120)
        finally:
            subscriber.close()
            with contextlib.suppress(OSError):
                flooder_cpu = _cpu_s(flooder.pid)
            flooder.kill()
            flooder.wait(10)
    ticking.cancel()
    assert pipeline.publisher is not None
    return summary["fps"], peak - rss_before, stall, pipeline.publisher.rejected_subscriptions, flooder_cpu


def _start_flooder(address: str, flood: int, stdout: int = subprocess.DEVNULL) -> subprocess.Popen[bytes]:
    return subprocess.Popen(["nice", "-n", str(FLOODER_NICE), sys.executable, "-c", FLOODER, address, str(flood),
                             str(FLOOD_BYTES)], stdout=stdout)


def publisher_only(flood: int = FLOOD) -> dict[str, float | int]:
    """The publisher alone (on its own thread, as the pipeline runs it) under the flood: peak RSS
    growth and subscriptions read and refused. Without a pipeline beside it, whose allocations move
    RSS by 100 MB either way, this measures the flood's own memory to a few MB."""
    publisher = MaskPublisher(LOOPBACK_ANY, stream_ids=["cam"])
    publisher.bind()
    thread = PublisherThread(publisher)
    thread.start()
    before = peak = _rss_mb()
    flooder = _start_flooder(publisher.bound_address, flood, subprocess.PIPE)
    assert flooder.stdout is not None
    try:
        flooder.stdout.readline()  # "flooded": every subscription has gone out once
        deadline = time.monotonic() + PUBLISHER_FLOOD_S
        while time.monotonic() < deadline:
            peak = max(peak, _rss_mb())
            time.sleep(RSS_SAMPLE_S)
    finally:
        flooder.kill()
        flooder.wait(10)
        flooder.stdout.close()
        thread.close()
    return {"rss_growth_mb": round(peak - before, 1), "refused": publisher.rejected_subscriptions}


async def measure(rounds: int) -> dict[str, object]:
    await run_once(0)  # warm-up: model, threads and allocator arenas
    quiet, flooded = [], []
    for _ in range(rounds):
        quiet.append(await run_once(0))
        flooded.append(await run_once(FLOOD))
    fps, flood_fps = max(r[0] for r in quiet), max(r[0] for r in flooded)
    return {
        "flood": {"subscriptions": FLOOD, "bytes_each": FLOOD_BYTES},
        "quiet": [dict(zip(FIELDS, r, strict=True)) for r in quiet],
        "flooded": [dict(zip(FIELDS, r, strict=True))
                    for r in flooded],
        "fps_ratio": round(flood_fps / fps, 3),
        "rss_growth_difference_mb": round(min(r[1] for r in flooded) - min(r[1] for r in quiet), 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--flooded-only", action="store_true",
                        help="one flooded run, no warm-up or quiet runs (no ratio): refusal, loop stalls and "
                             "the publisher's memory, what the test checks")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/flood-cpu-2core-x86_64.json"))
    args = parser.parse_args(argv)
    alone = publisher_only()  # first: before a pipeline has moved this process's memory
    result: dict[str, object]
    if args.flooded_only:
        flooded = asyncio.run(run_once(FLOOD))
        result = {"flood": {"subscriptions": FLOOD, "bytes_each": FLOOD_BYTES},
                  "flooded": [dict(zip(FIELDS, flooded, strict=True))]}
    else:
        result = asyncio.run(measure(args.rounds))
    result["publisher_only"] = alone
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k in ("fps_ratio", "rss_growth_difference_mb",
                                                                "publisher_only")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
