"""Decision-bridge benchmark: what the ZeroMQ mask link itself costs, model aside.

For every transport (TCP on loopback, a free port; IPC, a socket in a temporary folder), mask size
and payload encoding (``u8-raw``, ``u8-zlib``) one :class:`~decision_bridge.publisher.MaskPublisher`
sends real-looking masks to one :class:`~decision_bridge.subscriber.MaskSubscriber` (the reference
subscriber: decoding, checks and stream health included), and we measure:

* **masks/s** (throughput run): the publisher encodes and sends as fast as it can. It is
  configured so nothing is ever dropped: ``XPUB_NODROP`` with a send queue of ``SEND_HWM`` masks,
  a refused send retried after ``RETRY_S``; the subscriber checks that every seq arrived.
  masks/s = masks measured / (last receive - encode start of the first measured mask);
* **latency p50/p99** (paced run, below saturation): the publisher sends at a fixed rate
  (``--rate``, lowered to ``--load`` x the measured throughput if that is less); latency is per
  mask from just before it is encoded to just after the subscriber has decoded it, both on the
  host's CLOCK_MONOTONIC (publisher and subscriber share the host), so it covers encode, header
  JSON, ZeroMQ on both sides, the transport, decode, checks and health bookkeeping;
* **bytes per mask**: all three frames (topic, header JSON, payload) as sent.

The masks are the Cityscapes gtFine val ground truth in ``ROADSEG_SHARED`` (``../shared``),
folded into the 8 categories with :mod:`models.classes`'s table (the labels the benchmark ignores
keep their category, as a model would predict them) and resized with nearest-neighbour; without
that folder, the synthetic drive's exact truth (:mod:`models.datasets.synthetic_scene`).

Processes: the publisher runs in a spawned process of its own, the subscriber in this one, so each
side has a core (plus the ZeroMQ I/O thread each runs); CPU seconds of both are recorded.

    python -m benchmarks.bridge [--quick] [--out benchmarks/results/bridge-<machine>.json]
    roadseg bridge bench [the same options]

Results: ``benchmarks/results/bridge-<machine>.json`` (command line, machine and library
versions) and a Markdown table on stdout for the README. Measurements, not tests:
``tests/test_bridge_bench.py`` runs ``--quick`` and asserts no speed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing as mp
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.live_report import machine_busy_s, percentiles
from decision_bridge.publisher import MaskPublisher
from decision_bridge.schema import ZLIB_LEVEL, Encoding, MaskHeader, StageTimings, encode, encode_mask
from decision_bridge.subscriber import MaskSubscriber

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results"
SHARED = Path(os.environ.get("ROADSEG_SHARED", REPO.parent / "shared"))

TRANSPORTS = ("tcp", "ipc")
SIZES = ((1024, 512), (2048, 1024))  # (width, height)
ENCODINGS = (Encoding.RAW, Encoding.ZLIB)
FRAMES = 10  # distinct masks cycled through (the 10 val frames of the shared data)
SEND_HWM = 16  # masks queued per subscriber before a send is refused (nodrop): memory <= 16 x 2 MiB
RCV_HWM = 16
RETRY_S = 0.0005  # a refused send (queue full) is retried after this long: no mask is ever dropped
JOIN_TIMEOUT_S = 10.0  # the subscriber's subscription must reach the publisher within this
SILENCE_TIMEOUT_S = 10.0  # no mask for this long while some are still due: the run failed
THROUGHPUT_STREAM = "throughput"
PACED_STREAM = "paced"
CONTENDED_CORES = 0.2  # other processes busier than this during a run: the table says it was contended

DEFAULTS = {"throughput_masks": 600, "paced_masks": 400, "rate": 100.0, "warmup": 20}
QUICK = {"throughput_masks": 30, "paced_masks": 30, "rate": 200.0, "warmup": 5}


@dataclass(frozen=True)
class Phase:
    stream_id: str
    size: tuple[int, int]
    encoding: Encoding
    count: int
    rate: float | None  # masks/s; None: as fast as possible


# --------------------------------------------------------------------------- masks


def load_masks(sizes: Sequence[tuple[int, int]], frames: int = FRAMES,
               shared: Path = SHARED) -> tuple[dict[tuple[int, int], list[np.ndarray]], str]:
    """``frames`` HxW uint8 category masks per (width, height), and where they came from."""
    import cv2  # only the parent needs it, and only here

    from models.classes import _LABEL_ID_CATEGORY

    # labelId -> category for every label, the ones the benchmark ignores included (parking is
    # flat, a caravan a vehicle): what a model predicts there, never IGNORE.
    lut = np.zeros(256, dtype=np.uint8)
    for label_id, category in _LABEL_ID_CATEGORY.items():
        lut[label_id] = category
    files = sorted((shared / "cityscapes" / "gtFine" / "val").glob("*/*_gtFine_labelIds.png"))[:frames]
    truths = [cv2.imread(str(f), cv2.IMREAD_UNCHANGED) for f in files]
    if files and all(t is not None and t.ndim == 2 for t in truths):
        folded = [lut[t] for t in truths]
        source = f"cityscapes gtFine val, {len(files)} frames ({shared / 'cityscapes'}), resized nearest"
        return {s: [cv2.resize(m, s, interpolation=cv2.INTER_NEAREST) for m in folded] for s in sizes}, source
    from models.datasets.synthetic_scene import SyntheticDrive

    out = {}
    for width, height in sizes:
        drive = SyntheticDrive(seed=0, width=width, height=height)
        out[(width, height)] = [drive.render(i, noise=False)[1] for i in range(frames)]
    return out, f"synthetic drive truth, seed 0, {frames} frames (no Cityscapes in {shared})"


# --------------------------------------------------------------------------- publisher process


def _header(stream_id: str, seq: int, mask: np.ndarray, encoding: Encoding, capture_mono_ns: int,
            capture_wall_ns: int) -> MaskHeader:
    return MaskHeader(
        stream_id=stream_id, seq=seq, frame_name=f"bench-{seq}", capture_mono_ns=capture_mono_ns,
        capture_wall_ns=capture_wall_ns, publish_mono_ns=time.monotonic_ns(), publish_wall_ns=time.time_ns(),
        height=mask.shape[0], width=mask.shape[1], encoding=encoding, model_id="bridge-bench",
        timings=StageTimings(0.0, 0.0, 0.0, 0.0), batch_size=1, valid=True, invalid_reason=None,
        dropped_before=0, iou=None, live=True, run_id="bridge-bench")


def publish(publisher: MaskPublisher, masks: list[np.ndarray], phase: Phase) -> dict[str, Any]:
    """Send ``phase.count`` masks (paced or as fast as possible), never dropping one."""
    message_bytes = 0
    cpu0, start = time.process_time(), time.monotonic()
    for seq in range(phase.count):
        if phase.rate is not None:
            # An absolute schedule: a late send goes at once, without a catch-up burst mattering to
            # latency, which starts at the encode below.
            delay = start + seq / phase.rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        mask = masks[seq % len(masks)]
        capture_mono_ns, capture_wall_ns = time.monotonic_ns(), time.time_ns()
        payload = encode_mask(mask, phase.encoding)
        parts = encode(_header(phase.stream_id, seq, mask, phase.encoding, capture_mono_ns, capture_wall_ns),
                       payload)
        message_bytes += sum(len(p) for p in parts)
        while not publisher.send(parts, count_drop=False):
            time.sleep(RETRY_S)
    return {"cpu_s": time.process_time() - cpu0, "span_s": time.monotonic() - start,
            "message_bytes_mean": message_bytes / max(1, phase.count)}


def publisher_main(conn: Connection, masks: dict[tuple[int, int], list[np.ndarray]]) -> None:
    """The publisher process: bind, publish phases, close, as the parent says over ``conn``."""
    publisher: MaskPublisher | None = None
    try:
        while True:
            command, arg = conn.recv()
            if command == "bind":
                publisher = MaskPublisher(arg, send_hwm=SEND_HWM, nodrop=True)
                conn.send(publisher.bind())
            elif command == "publish":
                assert publisher is not None
                deadline = time.monotonic() + JOIN_TIMEOUT_S
                while not publisher.has_subscriber(arg.stream_id):
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"no subscriber joined {publisher.bound_address}")
                    time.sleep(0.002)
                stats = publish(publisher, masks[arg.size], arg)
                conn.send({**stats, "refused": publisher.refused, "dropped": publisher.dropped_hwm})
            elif command == "close":
                if publisher is not None:
                    publisher.close()
                publisher = None
                conn.send("closed")
            else:
                return
    except Exception as exc:
        conn.send(exc)
    finally:
        if publisher is not None:
            publisher.close()


class PublisherProcess:
    """The parent's handle on :func:`publisher_main` in a spawned process."""

    def __init__(self, masks: dict[tuple[int, int], list[np.ndarray]]) -> None:
        context = mp.get_context("spawn")  # a fresh interpreter: nothing of the parent's state (threads, zmq)
        self._conn, child = context.Pipe()
        self._process = context.Process(target=publisher_main, args=(child, masks), name="bridge-bench-publisher",
                                        daemon=True)
        self._process.start()
        child.close()

    def call(self, command: str, arg: Any = None) -> Any:
        self._conn.send((command, arg))
        return self.result()

    def start(self, command: str, arg: Any) -> None:
        self._conn.send((command, arg))

    def result(self, timeout_s: float = 60.0) -> Any:
        if not self._conn.poll(timeout_s):
            raise RuntimeError("the publisher process did not answer")
        answer = self._conn.recv()
        if isinstance(answer, Exception):
            raise RuntimeError(f"publisher process failed: {answer!r}") from answer
        return answer

    def stop(self) -> None:
        with contextlib.suppress(OSError):  # the process is already gone
            self._conn.send(("stop", None))
        self._process.join(5.0)
        if self._process.is_alive():
            self._process.kill()
            self._process.join()
        self._conn.close()


# --------------------------------------------------------------------------- subscriber side


def receive(sub: MaskSubscriber, phase: Phase, check: list[np.ndarray]) -> list[tuple[int, int, int, int]]:
    """Every mask of ``phase`` as (seq, capture_mono_ns, publish_mono_ns, decoded_mono_ns).

    The first mask's content is compared with what was sent (after its timestamp is taken)."""
    got: list[tuple[int, int, int, int]] = []
    while len(got) < phase.count:
        message = sub.recv(SILENCE_TIMEOUT_S)
        decoded = time.monotonic_ns()
        if message is None:
            raise RuntimeError(f"{phase.stream_id}: {len(got)} of {phase.count} masks arrived, then silence")
        h = message.header
        if h.stream_id != phase.stream_id:
            continue
        got.append((h.seq, h.capture_mono_ns, h.publish_mono_ns, decoded))
        if len(got) == 1 and not np.array_equal(message.mask, check[h.seq % len(check)]):
            raise RuntimeError(f"{phase.stream_id}: mask {h.seq} decoded differently from what was sent")
    seqs = [g[0] for g in got]
    if seqs != list(range(phase.count)):
        raise RuntimeError(f"{phase.stream_id}: masks lost or out of order (got {len(set(seqs))} distinct seqs)")
    return got


def run_phase(publisher: PublisherProcess, sub: MaskSubscriber, phase: Phase,
              masks: list[np.ndarray]) -> tuple[list[tuple[int, int, int, int]], dict[str, Any], dict[str, float]]:
    busy0, cpu0, t0 = machine_busy_s(), time.process_time(), time.monotonic()
    publisher.start("publish", phase)
    got = receive(sub, phase, masks)
    stats = publisher.result()
    span = time.monotonic() - t0
    busy1 = machine_busy_s()
    sub_cores = (time.process_time() - cpu0) / span
    pub_cores = stats["cpu_s"] / span
    total = None if busy0 is None or busy1 is None else (busy1 - busy0) / span
    cores = {"publisher": round(pub_cores, 2), "subscriber": round(sub_cores, 2),
             "other": None if total is None else round(max(0.0, total - pub_cores - sub_cores), 2)}
    return got, stats, cores


def measure(transport: str, size: tuple[int, int], encoding: Encoding, masks: list[np.ndarray],
            publisher: PublisherProcess, settings: dict[str, Any], folder: Path) -> dict[str, Any]:
    w, h = size
    address = ("tcp://127.0.0.1:0" if transport == "tcp"
               else f"ipc://{folder / f'bridge-{w}x{h}-{encoding.value}.sock'}")
    bound = publisher.call("bind", address)
    warmup = settings["warmup"]
    try:
        with MaskSubscriber(bound, [THROUGHPUT_STREAM, PACED_STREAM], rcv_hwm=RCV_HWM) as sub:
            fast = Phase(THROUGHPUT_STREAM, size, encoding, warmup + settings["throughput_masks"], None)
            got, fast_stats, cores = run_phase(publisher, sub, fast, masks)
            first = got[warmup]
            span_s = (got[-1][3] - first[1]) / 1e9
            masks_per_s = (len(got) - warmup) / span_s
            rate = min(settings["rate"], settings["load"] * masks_per_s)
            paced = Phase(PACED_STREAM, size, encoding, warmup + settings["paced_masks"], rate)
            got_paced, paced_stats, paced_cores = run_phase(publisher, sub, paced, masks)
    finally:
        publisher.call("close")
    measured = got_paced[warmup:]
    latency = percentiles([(done - capture) / 1e6 for _, capture, _, done in measured])
    encode_ms = percentiles([(published - capture) / 1e6 for _, capture, published, _ in measured])
    message_bytes = fast_stats["message_bytes_mean"]
    return {
        "transport": transport, "size": f"{w}x{h}", "encoding": encoding.value,
        "message_bytes": round(message_bytes), "raw_over_message": round(w * h / message_bytes, 1),
        "masks_per_s": round(masks_per_s, 1), "mb_per_s": round(masks_per_s * message_bytes / 1e6, 1),
        "throughput_masks": len(got) - warmup, "throughput_refused_sends": fast_stats["refused"],
        "throughput_cores": cores,
        "paced_rate_hz": round(rate, 1), "latency_ms": latency,
        "latency_p50_ms": latency["p50"], "latency_p99_ms": latency["p99"],
        "encode_ms": encode_ms,  # of the latency: encode_mask (max check + zlib) until the header's publish stamp
        "paced_cores": paced_cores,
        "dropped": paced_stats["dropped"],  # the publisher's count over both runs: 0, sends are retried
    }


# --------------------------------------------------------------------------- report


def markdown(results: dict[str, Any]) -> str:
    s = results["settings"]
    lines = [f"Decision bridge ({results['machine']['name']}; publisher and subscriber in separate processes; "
             f"{s['throughput_masks']} masks as fast as possible, then {s['paced_masks']} paced at "
             f"{s['rate']:g} masks/s or {s['load']:.0%} of that throughput if less; latency = encode start -> "
             f"decoded by MaskSubscriber; masks: {results['masks']}):", "",
             "| transport | size | encoding | bytes/mask | masks/s | MB/s | paced at /s | latency p50 ms | p99 ms |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in results["results"]:
        lines.append(f"| {r['transport']} | {r['size']} | {r['encoding']} | {r['message_bytes']:,} "
                     f"| {r['masks_per_s']:.0f} | {r['mb_per_s']:.1f} | {r['paced_rate_hz']:g} "
                     f"| {r['latency_p50_ms']:.2f} | {r['latency_p99_ms']:.2f} |")
    other = max_other_cores(results)
    if other is not None and other > CONTENDED_CORES:
        lines += ["", f"Contended: other processes kept up to {other:.2f} of the {results['machine']['cpu_count']} "
                      "cores busy during a run (see `throughput_cores` / `paced_cores`), so these numbers are low."]
    return "\n".join(lines)


def max_other_cores(results: dict[str, Any]) -> float | None:
    """The most cores other processes kept busy during any run (None where /proc/stat is missing)."""
    others = [r[key]["other"] for r in results["results"] for key in ("throughput_cores", "paced_cores")
              if r[key]["other"] is not None]
    return max(others) if others else None


# --------------------------------------------------------------------------- command line


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quick", action="store_true",
                        help=f"a few masks per combination (for tests): {QUICK}")
    parser.add_argument("--throughput-masks", type=int, default=None, metavar="N",
                        help=f"masks per throughput run (default {DEFAULTS['throughput_masks']})")
    parser.add_argument("--paced-masks", type=int, default=None, metavar="N",
                        help=f"masks per latency run (default {DEFAULTS['paced_masks']})")
    parser.add_argument("--rate", type=float, default=None, metavar="HZ",
                        help=f"latency runs: masks/s (default {DEFAULTS['rate']:g})")
    parser.add_argument("--load", type=float, default=0.5,
                        help="latency runs: at most this fraction of the measured throughput (default 0.5)")
    parser.add_argument("--warmup", type=int, default=None, metavar="N",
                        help=f"masks sent before each measured run (default {DEFAULTS['warmup']})")
    parser.add_argument("--transports", default=",".join(TRANSPORTS), help="comma list of tcp, ipc")
    parser.add_argument("--out", type=Path, default=None,
                        help="results JSON (default benchmarks/results/bridge-<machine>.json)")


def settings_of(args: argparse.Namespace) -> dict[str, Any]:
    base = QUICK if args.quick else DEFAULTS
    settings = {key: base[key] if getattr(args, key) is None else getattr(args, key) for key in base}
    settings["load"] = args.load
    for key in ("throughput_masks", "paced_masks"):
        if settings[key] < 2:
            raise SystemExit(f"--{key.replace('_', '-')} must be at least 2")
    if settings["warmup"] < 1 or not settings["rate"] > 0 or not 0 < settings["load"] <= 1:
        raise SystemExit("--warmup must be >= 1, --rate > 0 and --load in (0, 1]")
    return settings


def run(args: argparse.Namespace) -> dict[str, Any]:
    settings = settings_of(args)
    transports = [t for t in args.transports.split(",") if t]
    if not transports or any(t not in TRANSPORTS for t in transports):
        raise SystemExit(f"--transports: a comma list of {', '.join(TRANSPORTS)}")
    masks, source = load_masks(SIZES)
    rows = []
    publisher = PublisherProcess(masks)
    try:
        with tempfile.TemporaryDirectory(prefix="roadseg-bridge-") as folder:
            for transport in transports:
                for size in SIZES:
                    for encoding in ENCODINGS:
                        row = measure(transport, size, encoding, masks[size], publisher, settings, Path(folder))
                        print(f"{transport} {row['size']} {row['encoding']}: {row['masks_per_s']:.0f} masks/s, "
                              f"latency p50 {row['latency_p50_ms']:.2f} ms p99 {row['latency_p99_ms']:.2f} ms, "
                              f"{row['message_bytes']} B", file=sys.stderr, flush=True)
                        rows.append(row)
    finally:
        publisher.stop()
    from benchmarks.report import machine_info  # imports torch: after the measurements

    results = {"benchmark": "bridge", "machine": machine_info(), "masks": source,
            "command": getattr(args, "command_line", " ".join(["python -m benchmarks.bridge", *sys.argv[1:]])),
            "processes": "publisher: a spawned process; subscriber (MaskSubscriber, decode included): the main one",
            "settings": {**settings, "send_hwm": SEND_HWM, "rcv_hwm": RCV_HWM, "retry_s": RETRY_S,
                         "zlib_level": ZLIB_LEVEL},
            "results": rows}
    results["max_other_cores"] = max_other_cores(results)
    return results


def main_args(args: argparse.Namespace) -> int:
    results = run(args)
    if args.out is None:
        from benchmarks.report import machine_name

        args.out = RESULTS / f"bridge-{machine_name()}.json"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(markdown(results))
    print(f"wrote {args.out}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bridge", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    args.command_line = " ".join(["python -m benchmarks.bridge", *argv])
    return main_args(args)


if __name__ == "__main__":
    sys.exit(main())
