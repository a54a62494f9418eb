"""``roadseg bridge ...``: tools for the planner side of the contract.

``roadseg bridge echo ADDR`` subscribes like a planner would and prints one line per message:
masks with their stream and ``seq=N``, gaps where frames were lost, status messages when the
stream's state changes, and the end of stream with its final seq; health (alive, fresh, on
rate, valid) rides on every mask line. It exits when every stream it heard has ended, after
``--count`` masks, or after ``--timeout`` seconds without any message (exit 1).

``roadseg bridge keygen NAME [--dir DIR]`` writes a CURVE key pair (``NAME.key`` public,
``NAME.key_secret`` secret, mode 0600) for ``roadseg run --zmq-curve-key`` and for subscribers
(``echo --curve-server-key --curve-key``); it never overwrites a key.

``roadseg bridge bench`` measures the link itself (masks/s, latency p50/p99, bytes per mask for
each transport, size and encoding): ``benchmarks/bridge.py``, which lives in the source checkout.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any, TextIO

from decision_bridge.curve import CurveClient, generate_key_pair
from decision_bridge.health import StreamStatus
from decision_bridge.schema import DEFAULT_ADDRESS, MaskMessage
from decision_bridge.subscriber import MaskSubscriber, describe

POLL_S = 0.05
EXIT_OK, EXIT_SILENT = 0, 1


def add_subcommand(subparsers: Any) -> None:
    bridge = subparsers.add_parser("bridge", help="watch the ZeroMQ masks as a planner would (echo)")
    bridge.set_defaults(verbose=False)
    sub = bridge.add_subparsers(dest="bridge_command", required=True)
    echo = sub.add_parser("echo", help="print every message: stream, seq=N, gaps, health, end of stream")
    echo.add_argument("address", nargs="?", default=DEFAULT_ADDRESS,
                      help=f"publisher address (default {DEFAULT_ADDRESS})")
    echo.add_argument("--stream", action="append", metavar="ID", help="only this stream (repeatable)")
    echo.add_argument("--count", type=int, default=0, metavar="N", help="exit after N masks (0: no limit)")
    echo.add_argument("--timeout", type=float, default=None, metavar="S",
                      help="exit 1 after S seconds without any message (default: wait forever)")
    echo.add_argument("--curve-server-key", metavar="FILE",
                      help="CURVE: the publisher's public key file (NAME.key); needs --curve-key")
    echo.add_argument("--curve-key", metavar="FILE",
                      help="CURVE: this client's secret key file (NAME.key_secret, from `roadseg bridge keygen`)")
    echo.set_defaults(handler=run_echo)
    keygen = sub.add_parser("keygen", help="write a CURVE key pair: NAME.key (public) and NAME.key_secret (secret)")
    keygen.add_argument("name", metavar="NAME", help="file name of the pair, e.g. server or planner")
    keygen.add_argument("--dir", default=".", metavar="DIR", help="where to write it (default: here)")
    keygen.set_defaults(handler=run_keygen)
    bench = sub.add_parser("bench", help="measure the bridge: masks/s, latency p50/p99 and bytes per mask "
                                         "for tcp and ipc, 1024x512 and 2048x1024, u8-raw and u8-zlib")
    bench_module = _bench_module()
    if bench_module is not None:
        bench_module.add_arguments(bench)
    bench.set_defaults(handler=run_bench)


def run_echo(args: argparse.Namespace) -> int:
    logging.getLogger("decision_bridge").setLevel(logging.WARNING)
    if (args.curve_server_key is None) != (args.curve_key is None):
        raise ValueError("CURVE needs both --curve-server-key (the publisher's NAME.key) "
                         "and --curve-key (this client's NAME.key_secret)")
    curve = None if args.curve_key is None else CurveClient(Path(args.curve_server_key), Path(args.curve_key))
    with MaskSubscriber(args.address, args.stream, curve=curve) as sub:
        return Echo(sub, sys.stdout).run(count=args.count, timeout_s=args.timeout)


def run_keygen(args: argparse.Namespace) -> int:
    public, secret = generate_key_pair(Path(args.dir), args.name)
    print(f"public key: {public}  (give it to the other side)")
    print(f"secret key: {secret}  (mode 0600; keep it here)")
    return EXIT_OK


def _bench_module() -> ModuleType | None:
    """``benchmarks.bridge``: importable from the checkout's root, or found beside this package in a
    source checkout (an editable install); None in an installed wheel, which has no benchmarks."""
    try:
        return importlib.import_module("benchmarks.bridge")
    except ModuleNotFoundError:
        root = Path(__file__).resolve().parent.parent
        if not (root / "benchmarks" / "bridge.py").is_file():
            return None
        sys.path.insert(0, str(root))
        return importlib.import_module("benchmarks.bridge")


def run_bench(args: argparse.Namespace) -> int:
    bench_module = _bench_module()
    if bench_module is None:
        print("roadseg bridge bench needs a source checkout (benchmarks/bridge.py)", file=sys.stderr)
        return 1
    args.command_line = " ".join(["roadseg", *sys.argv[1:]])
    return int(bench_module.main_args(args))


class Echo:
    """The echo loop, apart from argument parsing so tests drive it directly."""

    def __init__(self, sub: MaskSubscriber, out: TextIO) -> None:
        self.sub = sub
        self.out = out
        self.masks = 0
        self._seen: dict[str, tuple[str, bool]] = {}  # stream -> (state, ended)
        # stream -> (run_id, seq) of its previous mask: gaps come from the masks themselves, because
        # one poll can return several masks and the subscriber's status already counts all of them
        self._previous: dict[str, tuple[str, int]] = {}

    def run(self, *, count: int = 0, timeout_s: float | None = None) -> int:
        heard = time.monotonic()
        while not (count and self.masks >= count):
            before = (self.sub.received, self.sub.reports, self.sub.rejected)
            for message in self.sub.poll(POLL_S):
                self._mask(message)
                if count and self.masks >= count:
                    break
            self._reports()
            if (self.sub.received, self.sub.reports, self.sub.rejected) != before:
                heard = time.monotonic()
            elif timeout_s is not None and time.monotonic() - heard > timeout_s:
                print(f"no message for {timeout_s:g} s from {self.sub.address}", file=self.out, flush=True)
                return EXIT_SILENT
            if self._seen and all(ended for *_, ended in self._seen.values()):
                break
        print(f"masks={self.masks} rejected={self.sub.rejected}", file=self.out, flush=True)
        return EXIT_OK

    def _mask(self, message: MaskMessage) -> None:
        self.masks += 1
        stream_id = message.header.stream_id
        status = self.sub.status(stream_id)
        self._gap_line(message, status)
        health = (f" alive={status.alive} fresh={status.fresh} on_rate={status.on_rate} "
                  f"stream_valid={status.valid}")
        print(describe(message, status, time.monotonic_ns()) + health, file=self.out, flush=True)

    def _reports(self) -> None:
        for stream_id in self.sub.stream_ids():
            status = self.sub.status(stream_id)
            state, ended = self._seen.get(stream_id, ("", False))
            if status.state and status.state != state:
                print(f"{stream_id} status state={status.state} last_seq={status.last_seq}", file=self.out, flush=True)
            if status.ended and not ended:
                print(f"{stream_id} end of stream final_seq={status.final_seq} missed={status.missed}",
                      file=self.out, flush=True)
            self._seen[stream_id] = (status.state, status.ended)

    def _gap_line(self, message: MaskMessage, status: StreamStatus) -> None:
        header = message.header
        previous = self._previous.get(header.stream_id)
        self._previous[header.stream_id] = (header.run_id, header.seq)
        if previous is None or previous[0] != header.run_id or header.seq <= previous[1] + 1:
            return  # first mask, publisher restart (seq starts again) or no loss
        print(f"{header.stream_id} gap: {header.seq - previous[1] - 1} frame(s) lost before seq={header.seq} "
              f"(dropped by the publisher so far: {status.dropped_upstream})", file=self.out, flush=True)
