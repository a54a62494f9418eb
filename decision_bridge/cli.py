"""``roadseg bridge ...``: tools for the planner side of the contract.

``roadseg bridge echo ADDR`` subscribes like a planner would and prints one line per message:
masks with their stream and ``seq=N``, gaps where frames were lost, status messages when the
stream's state changes, and the end of stream with its final seq; health (alive, fresh, on
rate, valid) rides on every mask line. It exits when every stream it heard has ended, after
``--count`` masks, or after ``--timeout`` seconds without any message (exit 1).
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from typing import Any, TextIO

from decision_bridge.health import StreamStatus
from decision_bridge.schema import DEFAULT_ADDRESS, MaskMessage
from decision_bridge.subscriber import MaskSubscriber, describe

POLL_S = 0.05
EXIT_OK, EXIT_SILENT = 0, 1


def add_subcommand(subparsers: Any) -> None:
    bridge = subparsers.add_parser("bridge", help="watch the ZeroMQ masks as a planner would (echo)")
    bridge.set_defaults(verbose=False)
    sub = bridge.add_subparsers(dest="bridge_command", required=True, metavar="{echo}")
    echo = sub.add_parser("echo", help="print every message: stream, seq=N, gaps, health, end of stream")
    echo.add_argument("address", nargs="?", default=DEFAULT_ADDRESS,
                      help=f"publisher address (default {DEFAULT_ADDRESS})")
    echo.add_argument("--stream", action="append", metavar="ID", help="only this stream (repeatable)")
    echo.add_argument("--count", type=int, default=0, metavar="N", help="exit after N masks (0: no limit)")
    echo.add_argument("--timeout", type=float, default=None, metavar="S",
                      help="exit 1 after S seconds without any message (default: wait forever)")
    echo.set_defaults(handler=run_echo)


def run_echo(args: argparse.Namespace) -> int:
    logging.getLogger("decision_bridge").setLevel(logging.WARNING)
    with MaskSubscriber(args.address, args.stream) as sub:
        return Echo(sub, sys.stdout).run(count=args.count, timeout_s=args.timeout)


class Echo:
    """The echo loop, apart from argument parsing so tests drive it directly."""

    def __init__(self, sub: MaskSubscriber, out: TextIO) -> None:
        self.sub = sub
        self.out = out
        self.masks = 0
        self._seen: dict[str, tuple[int, int, str, bool]] = {}  # stream -> (gaps, missed, state, ended)

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
        self._gap_line(stream_id, status)
        health = (f" alive={status.alive} fresh={status.fresh} on_rate={status.on_rate} "
                  f"stream_valid={status.valid}")
        print(describe(message, status, time.monotonic_ns()) + health, file=self.out, flush=True)

    def _reports(self) -> None:
        for stream_id in self.sub.stream_ids():
            status = self.sub.status(stream_id)
            _, _, state, ended = self._seen.get(stream_id, (0, 0, "", False))
            if status.state and status.state != state:
                print(f"{stream_id} status state={status.state} last_seq={status.last_seq}", file=self.out, flush=True)
            if status.ended and not ended:
                print(f"{stream_id} end of stream final_seq={status.final_seq} missed={status.missed}",
                      file=self.out, flush=True)
            self._seen[stream_id] = (status.gaps, status.missed, status.state, status.ended)

    def _gap_line(self, stream_id: str, status: StreamStatus) -> None:
        _, missed, state, ended = self._seen.get(stream_id, (0, 0, "", False))
        if status.missed > missed:
            print(f"{stream_id} gap: {status.missed - missed} frame(s) lost before seq={status.last_seq} "
                  f"(dropped by the publisher so far: {status.dropped_upstream})", file=self.out, flush=True)
        self._seen[stream_id] = (status.gaps, status.missed, state, ended)
