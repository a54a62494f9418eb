"""An independent subscriber in C (decision_bridge/examples/c_subscriber), written from SCHEMA.md
alone, against real pipelines: if the document is enough, it sees every lost frame at its seq, the
end of a replay with its final seq, a frozen publisher within the promised 0.6 s, the drivable-space
message of a road model, and decodes every mask byte for byte as the Python reference does. Plus
hostile messages it must refuse without crashing (built with AddressSanitizer where available)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import pytest
import zmq

from models.backends.common import Precision
from stream.config import PipelineConfig
from tests.conftest import REPO, require_shared
from tests.pipeline_helpers import running, subscribe

SOURCE = REPO / "decision_bridge" / "examples" / "c_subscriber" / "roadseg_sub.c"
WARNINGS = ["-Wall", "-Wextra", "-Werror"]
SANITIZERS = ["-fsanitize=address,undefined", "-fno-sanitize-recover=all"]


def _compile(out: Path, flags: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(["cc", *flags, "-o", str(out), str(SOURCE), "-lzmq", "-lz"], capture_output=True, text=True)


@pytest.fixture(scope="module")
def c_build(tmp_path_factory: pytest.TempPathFactory) -> Path:
    probe = subprocess.run(["cc", "-E", "-x", "c", "-"], input="#include <zmq.h>\n", capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip("zmq.h (libzmq's C header) is not installed: scripts/install-system-deps installs libzmq3-dev")
    return tmp_path_factory.mktemp("c_subscriber")


@pytest.fixture(scope="module")
def c_subscriber(c_build: Path) -> Path:
    binary = c_build / "roadseg_sub"
    built = _compile(binary, ["-O2", *WARNINGS])
    assert built.returncode == 0, built.stderr
    return binary


def _free_address() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"tcp://127.0.0.1:{s.getsockname()[1]}"


def _fields(line: str) -> dict[str, str]:
    return dict(word.split("=", 1) for word in line.split()[2:] if "=" in word)


class CSubscriber:
    """The C program as a process; each stdout line kept with the monotonic time it was read."""

    def __init__(self, binary: Path, *args: str, env: dict[str, str] | None = None) -> None:
        self.process = subprocess.Popen([str(binary), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                        text=True, env=env)
        self.lines: list[tuple[float, str]] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append((time.monotonic(), line.rstrip("\n")))

    def text(self) -> list[str]:
        return [line for _, line in self.lines]

    def wait_line(self, match: Callable[[str], bool], timeout_s: float, start: int = 0) -> tuple[int, float, str]:
        """The first matching line from index ``start``: (index, when it was read, line)."""
        deadline = time.monotonic() + timeout_s
        while True:
            for index in range(start, len(self.lines)):
                if match(self.lines[index][1]):
                    return (index, *self.lines[index])
            assert self.process.poll() is None or self._reader.is_alive(), (self.text(), self.stderr())
            assert time.monotonic() < deadline, f"no such line in {timeout_s} s: {self.text()[-20:]}"
            time.sleep(0.01)

    def finish(self, timeout_s: float) -> int:
        try:
            code = self.process.wait(timeout_s)
        finally:
            self.process.kill()
            self._reader.join(10)
        return code

    def stderr(self) -> str:
        return "" if self.process.poll() is None or self.process.stderr is None else self.process.stderr.read()


# --- (a) every lost frame and the end of a replay, (b) the same masks as the reference ------------------------


async def test_c_subscriber_sees_every_lost_frame_and_decodes_masks_like_the_reference(tmp_path, c_subscriber):
    folder = tmp_path / "frames"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(7):
        path = folder / f"f{i:02d}.png"
        if i in (0, 3, 6):  # undecodable: frame 0 (section 6's first-message rules), a middle one, the last (eos)
            path.write_bytes(b"not a png")
        else:
            cv2.imwrite(str(path), rng.integers(0, 255, (64, 128, 3), np.uint8))
    address = _free_address()
    c = CSubscriber(c_subscriber, address, "--timeout", "90")  # connects first, re-dialling until roadseg binds
    config = PipelineConfig(sources=(f"cam={folder}",), model="demo", precision=Precision.FP32, zmq_address=address,
                            zmq_wait_subscriber_s=60.0, zmq_subscribers=2, viewer=None, stats_interval_s=0)
    reference: dict[int, tuple[str, int]] = {}  # seq -> (run_id, crc32 of the mask MaskSubscriber decoded)
    try:
        async with running(config) as (pipeline, task):
            sub = await subscribe(pipeline, task)
            try:
                deadline = time.monotonic() + 60
                while True:
                    for message in sub.poll(0):
                        reference[message.header.seq] = (message.header.run_id, zlib.crc32(message.mask.tobytes()))
                    if sub.status("cam").ended:
                        break
                    assert time.monotonic() < deadline, "the reference subscriber saw no end of stream"
                    await asyncio.sleep(0.01)
            finally:
                sub.close()
            await task
        code = await asyncio.to_thread(c.finish, 30)
    finally:
        c.process.kill()
    lines = c.text()
    assert code == 0, (lines, c.stderr())
    events = [line for line in lines if not line.startswith("status ")]
    # each gap is reported right before the mask that reveals it, the tail by the end of stream
    assert [line.split()[0] for line in events] == ["gap", "mask", "mask", "gap", "mask", "mask", "eos", "end"], events
    assert events[0] == "gap cam lost=1 before_seq=1 dropped_before=1"
    assert events[3] == "gap cam lost=1 before_seq=4 dropped_before=1"
    assert events[6] == "eos cam final_seq=6 reason=ended tail=1 missed=3 gaps=2"
    assert events[7] == "end streams=1 masks=4 rejected=0"
    masks = [_fields(line) for line in events if line.startswith("mask ")]
    assert all(m["valid"] == "1" and m["classes_ok"] == "1" and m["enc"] == "zlib" for m in masks)
    assert all("128x64" in line for line in events if line.startswith("mask "))
    decoded = {int(m["seq"]): (m["run"], int(m["crc32"], 16)) for m in masks}
    assert decoded == reference  # (b): byte-identical masks, seqs and run id
    assert {run for run, _ in decoded.values()} == {pipeline.run_id}
    statuses = [_fields(line) for line in lines if line.startswith("status cam ")]
    assert statuses and {s["period_ms"] for s in statuses} == {"200"}


# --- (c) a frozen publisher, and the single-frame form --------------------------------------------------------


@pytest.mark.skipif(sys.platform != "linux", reason="SIGSTOP semantics")
def test_c_subscriber_reports_a_publisher_frozen_by_sigstop_dead_within_three_status_periods(c_subscriber):
    address = _free_address()
    c = CSubscriber(c_subscriber, address, "--latest", "cam", "--timeout", "120")
    command = [sys.executable, "-m", "stream.cli", "run", "--source", "cam=synthetic:size=128x64,frames=100000",
               "--rate", "10", "--replay-mode", "live", "--model", "demo", "--zmq", address, "--zmq-mode", "latest",
               "--viewer", "off", "--precision", "fp32"]
    publisher = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                 env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        index = -1
        for _ in range(10):  # model loaded, a second of masks flowing
            index, _, _ = c.wait_line(lambda line: line.startswith("mask cam "), 90, index + 1)
            assert publisher.poll() is None
        assert not [line for line in c.text() if line.startswith(("dead", "reject"))], c.text()
        publisher.send_signal(signal.SIGSTOP)
        stopped = time.monotonic()
        index, seen_dead, dead = c.wait_line(lambda line: line.startswith("dead cam "), 10, index)
        # Schema: dead 3 status periods (0.6 s) after the last message, which came before SIGSTOP. The margin is
        # scheduling on a busy machine, and still far below the C program's own 3 s fallback before any status.
        assert seen_dead - stopped < 1.5, (seen_dead - stopped, dead)
        assert _fields(dead)["limit_ms"] == "600"
        publisher.send_signal(signal.SIGCONT)
        index, _, _ = c.wait_line(lambda line: line.startswith("alive cam "), 30, index)
        for _ in range(3):  # publishing again
            index, _, _ = c.wait_line(lambda line: line.startswith("mask cam "), 30, index + 1)
        publisher.send_signal(signal.SIGTERM)
        code = c.finish(60)
    finally:
        if publisher.poll() is None:
            publisher.send_signal(signal.SIGCONT)
            publisher.kill()
        publisher.wait(30)
        c.process.kill()
    lines = c.text()
    assert code == 0, (lines[-20:], c.stderr())
    assert not [line for line in lines if line.startswith("reject")], lines
    masks = {_fields(line)["seq"]: line.split("seq=", 1)[1] for line in lines if line.startswith("mask cam ")}
    latest = {_fields(line)["seq"]: line.split("seq=", 1)[1] for line in lines if line.startswith("latest cam ")}
    both = masks.keys() & latest.keys()
    assert len(both) >= 10 and all(masks[seq] == latest[seq] for seq in both)  # same header fields, same crc32
    eos = _fields(next(line for line in lines if line.startswith("eos cam ")))
    gaps = [_fields(line) for line in lines if line.startswith("gap cam ")]
    last_mask = max(int(seq) for seq in masks)
    assert eos["reason"] in ("ended", "stopped") and int(eos["final_seq"]) >= last_mask
    assert int(eos["tail"]) == int(eos["final_seq"]) - last_mask
    assert int(eos["missed"]) == sum(int(g["lost"]) for g in gaps) + int(eos["tail"])
    assert lines[-1].startswith("end streams=1 ")


# --- (d) drivable space from a model with a road layer --------------------------------------------------------


async def test_c_subscriber_checks_the_drivable_space_of_a_road_model(tmp_path, c_subscriber, dabnet_checkpoint):
    frames = require_shared("cityscapes/leftImg8bit/val/frankfurt")
    folder = tmp_path / "frames"
    folder.mkdir()
    for path in sorted(frames.glob("*.png"))[:2]:  # small frames at the model's input size: fast, full-size layer
        small = cv2.resize(cv2.imread(str(path)), (512, 256), interpolation=cv2.INTER_AREA)
        cv2.imwrite(str(folder / path.name), small)
    address = _free_address()
    c = CSubscriber(c_subscriber, address, "--timeout", "120")
    config = PipelineConfig(sources=(f"cam={folder}",), model=str(dabnet_checkpoint), input_size=(512, 256),
                            precision=Precision.FP32, zmq_address=address, zmq_wait_subscriber_s=60.0,
                            viewer=None, stats_interval_s=0)
    try:
        async with running(config) as (_pipeline, task):
            await task
        code = await asyncio.to_thread(c.finish, 60)
    finally:
        c.process.kill()
    lines = c.text()
    assert code == 0, (lines, c.stderr())
    events = [line for line in lines if not line.startswith("status ")]
    assert [line.split()[0] for line in events] == ["mask", "road", "mask", "road", "eos", "end"], events
    for mask_line, road_line in ((events[0], events[1]), (events[2], events[3])):
        mask, road = _fields(mask_line), _fields(road_line)
        assert road["seq"] == mask["seq"] and " 512x256 layer=512x256 " in road_line
        # the C program's own checks: free rows recomputed from the layer, road only on flat ground
        assert road["free_ok"] == "1" and road["inside_flat"] == "1" and road["valid"] == "1"
        assert float(road["road_fraction"]) == pytest.approx(int(road["road_px"]) / (512 * 256), abs=1e-4)
        assert float(road["fractions_sum"]) == pytest.approx(1.0, abs=1e-3)
        assert 0.1 < float(road["road_fraction"]) < 0.6  # a Frankfurt street: a good share of road


# --- hostile input ---------------------------------------------------------------------------------------------


def _header(**changes) -> dict:
    header = {"schema": "roadseg.mask", "version": 1, "stream_id": "cam", "seq": 0, "frame_name": "f.png",
              "capture_mono_ns": 5123456789012, "capture_wall_ns": 1700000000123456789,
              "publish_mono_ns": 5123498789012, "publish_wall_ns": 1700000000165456789, "height": 4, "width": 6,
              "encoding": "u8-zlib", "model_id": "m", "batch_size": 1, "valid": True, "invalid_reason": None,
              "timings": {"queue_ms": 1.5, "preprocess_ms": 2, "inference_ms": 30.0, "postprocess_ms": 3.0},
              "dropped_before": 0, "iou": {"per_class": [0.5, 1, None, None, None, None, None, 0.25], "mean": 0.58},
              "classes": ["void", "flat", "construction", "object", "nature", "sky", "human", "vehicle"],
              "run_id": "00000000000000aa"}
    header.update(changes)
    return header


def _mask_parts(header: dict | bytes, payload: bytes | None = None, topic: bytes = b"mask/cam") -> list[bytes]:
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    mask = np.arange(24, dtype=np.uint8).reshape(4, 6) % 8
    return [topic, raw, zlib.compress(mask.tobytes()) if payload is None else payload]


def _report(event: str, stream_id: str = "cam", **changes) -> list[bytes]:
    body = {"schema": "roadseg.stream", "version": 1, "kind": event, "stream_id": stream_id,
            "run_id": "00000000000000aa", "state": "live", "last_seq": -1, "published": 0, "dropped": 0,
            "fps": None, "mask_fps": None, "live": False, "max_age_ms": None, "period_ms": 200.0, "reconnects": 0,
            "publish_mono_ns": 1, "publish_wall_ns": 2, "reason": "ended" if event == "eos" else None}
    body.update(changes)
    return [f"{event}/{stream_id}".encode(), json.dumps(body).encode()]


def test_c_subscriber_refuses_hostile_messages_and_keeps_going(c_build):
    binary = c_build / "roadseg_sub_sanitized"
    if _compile(binary, ["-O1", "-g", *SANITIZERS, *WARNINGS]).returncode != 0:  # no libasan here: plain build
        built = _compile(binary, ["-O2", *WARNINGS])
        assert built.returncode == 0, built.stderr
    good = zlib.compress(bytes(24))
    deep = {"x": 0}
    for _ in range(30):  # 31 levels below the header: 32 in all, the limit
        deep = {"x": deep}
    bad: list[tuple[list[bytes], str]] = [
        (_mask_parts(_header())[:2], "mask not 3 frames"),
        ([*_mask_parts(_header()), b""], "mask not 3 frames"),
        (_mask_parts(_header(x={"x": deep})), "mask nested deeper than 32"),
        (_mask_parts(b'{"\\ud800":1}'), "mask unpaired high surrogate"),  # in a key
        (_mask_parts(b'{"a":"\\udc00\\ud800"}'), "mask lone low surrogate"),
        (_mask_parts(b'{"a":"\\ud800x"}'), "mask unpaired high surrogate"),
        (_mask_parts(json.dumps(_header(x=1)).replace('"x": 1', '"x": 1e400').encode()), "mask number overflows"),
        (_mask_parts(json.dumps(_header(x=1)).replace('"x": 1', '"x": 9223372036854775808').encode()),
         "mask integer beyond 64 bits"),
        (_mask_parts(json.dumps(_header(x=1)).replace('"x": 1', '"x": NaN').encode()), "mask unexpected character"),
        (_mask_parts(b'{"a":"\xc0\xaf"}'), "mask header is not UTF-8"),  # an overlong '/'
        (_mask_parts(b'{"a":"\xed\xa0\x80"}'), "mask header is not UTF-8"),  # an encoded surrogate
        (_mask_parts(b'{"a":"tab\there"}'), "mask control character"),
        (_mask_parts(json.dumps(_header()).encode() + b" x"), "mask bytes after the JSON value"),
        (_mask_parts(b"[1]"), "mask header is not an object"),
        (_mask_parts(json.dumps(_header(pad="x" * 65536)).encode()), "mask header over 64 KiB"),
        (_mask_parts(_header(version=2)), "mask unsupported roadseg.mask version 2 (supported: 1)"),
        (_mask_parts(_header(schema="roadseg.other")), "mask schema is not the expected one"),
        (_mask_parts({k: v for k, v in _header().items() if k != "seq"}), "mask seq missing"),
        (_mask_parts(_header(seq=-1)), "mask seq out of range"),
        (_mask_parts(_header(seq=1.0)), "mask seq is not an integer"),
        (_mask_parts(_header(valid=1)), "mask valid is not a boolean"),
        (_mask_parts(_header(width=16385)), "mask width out of range"),
        (_mask_parts(_header(iou={"per_class": [0.5], "mean": 0.5})), "mask iou.per_class is not one entry"),
        (_mask_parts(_header(classes=[])), "mask classes must have 1..256 entries"),
        (_mask_parts(_header(stream_state="sleepy")), "mask stream_state has an unknown value"),
        (_mask_parts(_header(), good[:-3]), "mask truncated zlib stream"),
        (_mask_parts(_header(), good + b"\0"), "mask bytes after the zlib stream"),
        (_mask_parts(_header(), zlib.compress(bytes(25))), "mask decoded size is not height*width"),
        (_mask_parts(_header(), b"\x78\x9c" + b"\xff" * 20), "mask corrupt zlib stream"),
        (_mask_parts(_header(encoding="u8-raw"), bytes(23)), "mask u8-raw payload is not height*width bytes"),
        (_mask_parts(_header(), zlib.compress(bytes(23) + b"\x08")), "mask category id >= len(classes)"),
        (_mask_parts(_header(stream_id="cam2")), "mask topic is not mask/ + stream_id"),
        (_report("status", period_ms=0), "status period_ms out of range"),
        (_report("status", kind="eos"), "status kind is not the topic's prefix"),
        (_report("eos", reason="bored"), "eos reason has an unknown value"),
        ([b"road/cam", b"{}", b"", b""], "road schema missing"),
    ]
    with zmq.Context() as ctx, ctx.socket(zmq.XPUB) as pub:
        pub.setsockopt(zmq.LINGER, 0)
        pub.bind("tcp://127.0.0.1:*")
        address = pub.getsockopt(zmq.LAST_ENDPOINT).decode()
        c = CSubscriber(binary, address, "--timeout", "60", env={**os.environ, "ASAN_OPTIONS": "detect_leaks=0"})
        try:
            subscriptions = set()
            while len(subscriptions) < 4:  # mask/, status/, eos/, road/: sent once the C program connected
                assert pub.poll(30_000), "the C subscriber never subscribed"
                subscriptions.add(pub.recv())
            for parts, _ in bad:
                pub.send_multipart(parts)
            # Frames lost before the first mask, told two ways. cam: a status sent before frame 0 (last_seq -1),
            # then seq 1, which the publisher did publish (dropped_before 0): frame 0 was lost on the way.
            pub.send_multipart(_report("status"))
            # at the limits: 32 levels, the smallest int64
            pub.send_multipart(_mask_parts(_header(seq=1, x=deep, y=-9223372036854775808, encoding="u8-raw"),
                                           bytes(24)))
            # a duplicate key: the last one counts (seq 3, not 7), so seq 2 is the gap
            pub.send_multipart(_mask_parts(b'{"seq": 7, ' + json.dumps(_header(seq=3)).encode()[1:]))
            # cam2, never heard before: its first mask says the publisher dropped every frame before it.
            # Before cam's end: the program exits once every stream it has heard of has ended, so a cam2
            # mask arriving after cam's eos (a later TCP read) would find it gone.
            pub.send_multipart(_mask_parts(_header(stream_id="cam2", seq=2, dropped_before=2), topic=b"mask/cam2"))
            pub.send_multipart(_report("eos", last_seq=4))
            pub.send_multipart(_report("eos", "cam2", last_seq=2))
            code = c.finish(30)
        finally:
            c.process.kill()
    lines = c.text()
    assert code == 0, (lines, c.stderr())
    rejects = [line for line in lines if line.startswith("reject ")]
    assert len(rejects) == len(bad), rejects
    for line, (_, expected) in zip(rejects, bad, strict=True):
        assert line.startswith(f"reject {expected}"), (line, expected)
    events = [line for line in lines if not line.startswith(("reject ", "status "))]
    assert events[0] == "gap cam lost=1 before_seq=1 dropped_before=0"
    assert events[1].startswith("mask cam seq=1 run=00000000000000aa 6x4 enc=raw valid=1 dropped_before=0 classes_ok=1")
    assert events[2] == "gap cam lost=1 before_seq=3 dropped_before=0"
    assert events[3].startswith("mask cam seq=3 ")
    assert events[3].endswith(f"crc32={zlib.crc32(np.arange(24, dtype=np.uint8) % 8):08x}")
    assert events[4] == "gap cam2 lost=2 before_seq=2 dropped_before=2"
    assert events[5].startswith("mask cam2 seq=2 ")
    assert events[6:] == ["eos cam final_seq=4 reason=ended tail=1 missed=3 gaps=2",
                          "eos cam2 final_seq=2 reason=ended tail=0 missed=2 gaps=1",
                          f"end streams=2 masks=3 rejected={len(bad)}"]
