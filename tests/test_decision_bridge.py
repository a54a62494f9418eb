"""decision_bridge: wire format, XPUB publisher, reference subscriber and its health checks.

Real ZeroMQ sockets on random loopback ports; every receive has a timeout so a broken
transport fails fast instead of hanging the suite.
"""

from __future__ import annotations

import asyncio
import json
import math
import subprocess
import sys
import time
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zmq

from decision_bridge import (
    SCHEMA_NAME,
    SCHEMA_VERSION,
    Encoding,
    IoUReport,
    MaskHeader,
    MaskPublisher,
    MaskSubscriber,
    PublisherError,
    SchemaError,
    StageTimings,
    decode,
    encode,
    encode_mask,
    encode_message,
)
from decision_bridge.health import RATE_WINDOW_MESSAGES
from decision_bridge.subscriber import main as subscriber_main
from models.classes import CLASS_NAMES, NUM_CLASSES

pytestmark = pytest.mark.timeout(30)

REPO_ROOT = Path(__file__).resolve().parents[1]
ANY_PORT = "tcp://127.0.0.1:0"
RECV_TIMEOUT_S = 5.0
JOIN_TIMEOUT_S = 5.0
MS = 1_000_000  # ns


# --------------------------------------------------------------------------- helpers


def make_mask(height: int = 48, width: int = 64, shift: int = 0) -> np.ndarray:
    """A mask using every class, different per ``shift`` so frames are distinguishable."""
    rows = np.arange(height)[:, None] // 6
    cols = np.arange(width)[None, :] // 8
    return ((rows + cols + shift) % NUM_CLASSES).astype(np.uint8)


def make_header(**overrides: Any) -> MaskHeader:
    fields: dict[str, Any] = dict(
        stream_id="cam0",
        seq=0,
        frame_name="aachen_000000_000019_leftImg8bit.png",
        capture_mono_ns=1_000 * MS,
        capture_wall_ns=1_700_000_000_000_000_000,
        publish_mono_ns=1_042 * MS,
        publish_wall_ns=1_700_000_000_042_000_000,
        height=48,
        width=64,
        encoding=Encoding.ZLIB,
        model_id="fastscnn-cityscapes8@3f2a9c1",
        timings=StageTimings(queue_ms=1.5, preprocess_ms=2.25, inference_ms=30.0, postprocess_ms=3.0),
        batch_size=4,
        valid=True,
        invalid_reason=None,
        dropped_before=0,
        iou=IoUReport(per_class=(0.5, 0.97, 0.8, None, 0.7, 0.9, 0.4, 0.85), mean=0.73),
    )
    fields.update(overrides)
    return MaskHeader(**fields)


def make_parts(mask: np.ndarray | None = None, **overrides: Any) -> list[bytes]:
    mask = make_mask() if mask is None else mask
    header = make_header(height=mask.shape[0], width=mask.shape[1], **overrides)
    return encode_message(header, mask)


def header_json(parts: list[bytes]) -> dict[str, Any]:
    obj: dict[str, Any] = json.loads(parts[1])
    return obj


def with_json(parts: list[bytes], edit: Callable[[dict[str, Any]], None]) -> list[bytes]:
    obj = header_json(parts)
    edit(obj)
    return [parts[0], json.dumps(obj).encode(), parts[2]]


class FakeClock:
    """Injected subscriber clock: health is tested by moving time, not by sleeping."""

    def __init__(self) -> None:
        self.now_ns = 0

    def __call__(self) -> int:
        return self.now_ns

    def advance_ms(self, ms: float) -> None:
        self.now_ns += int(ms * MS)


def join(pub: MaskPublisher, stream_id: str | None = None) -> None:
    assert asyncio.run(pub.wait_for_subscriber(JOIN_TIMEOUT_S, stream_id)), "subscriber never joined"


def deliver(pub: MaskPublisher, sub: MaskSubscriber, parts: list[bytes]) -> Any:
    assert pub.send(parts)
    message = sub.recv(RECV_TIMEOUT_S)
    assert message is not None, "message not delivered within timeout"
    return message


@pytest.fixture
def publisher() -> Iterator[MaskPublisher]:
    pub = MaskPublisher(ANY_PORT)
    pub.bind()
    yield pub
    pub.close()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def connect(publisher: MaskPublisher) -> Iterator[Callable[..., MaskSubscriber]]:
    """Factory: a subscriber connected to ``publisher`` whose subscription the XPUB has seen."""
    subs: list[MaskSubscriber] = []

    def _connect(streams: list[str] | None = None, **kwargs: Any) -> MaskSubscriber:
        sub = MaskSubscriber(publisher.bound_address, streams, **kwargs)
        sub.connect()
        subs.append(sub)
        # Wait for THIS subscriber too: earlier ones already satisfy a plain "anyone there?".
        assert asyncio.run(publisher.wait_for_subscriber(JOIN_TIMEOUT_S, count=len(subs)))
        return sub

    yield _connect
    for sub in subs:
        sub.close()


# --------------------------------------------------------------------------- schema


@pytest.mark.parametrize("encoding", list(Encoding))
def test_round_trip_both_encodings(encoding: Encoding) -> None:
    mask = make_mask(37, 53, shift=3)
    header = make_header(height=37, width=53, encoding=encoding, valid=False, invalid_reason="warming up")
    parts = encode(header, encode_mask(mask, encoding))
    assert parts[0] == b"mask/cam0"
    obj = header_json(parts)
    assert (obj["schema"], obj["version"], obj["encoding"]) == (SCHEMA_NAME, SCHEMA_VERSION, encoding.value)
    assert obj["timings"]["inference_ms"] == 30.0 and obj["iou"]["per_class"][3] is None
    message = decode(parts)
    assert message.header == header
    assert message.mask.dtype == np.uint8 and message.mask.shape == (37, 53)
    np.testing.assert_array_equal(message.mask, mask)
    assert not message.mask.flags.writeable


def test_payload_layout_is_plain_row_major_and_rfc1950_zlib() -> None:
    mask = make_mask(30, 40)
    assert encode_mask(mask, Encoding.RAW) == mask.tobytes(order="C")
    compressed = encode_mask(mask, Encoding.ZLIB)
    assert zlib.decompress(compressed) == mask.tobytes()  # any zlib in any language reads it
    assert len(compressed) < mask.size // 4


def test_header_defaults_and_latency() -> None:
    header = make_header(iou=None)
    assert header.classes == CLASS_NAMES and len(header.classes) == NUM_CLASSES == 8
    assert header.latency_ms == pytest.approx(42.0)
    message = decode(encode_message(header, make_mask()))
    assert message.header.iou is None and message.header.classes == CLASS_NAMES


def test_unknown_json_keys_are_ignored_within_a_version() -> None:
    parts = with_json(make_parts(), lambda h: h.update(future_field={"x": 1}, exposure_ms=8.0))
    assert decode(parts).header == make_header()


Corrupt = Callable[[list[bytes]], list[bytes]]


def _json(edit: Callable[[dict[str, Any]], object]) -> Corrupt:
    return lambda parts: with_json(parts, edit)  # type: ignore[arg-type]


def _set(key: str, value: Any) -> Corrupt:
    return _json(lambda h: h.__setitem__(key, value))


def _delete(key: str) -> Corrupt:
    return _json(lambda h: h.pop(key))


def _frames(topic: bytes | None = None, header: bytes | None = None, payload: bytes | None = None) -> Corrupt:
    return lambda p: [topic or p[0], header or p[1], p[2] if payload is None else payload]


# (test id, how to corrupt a good message, text the SchemaError must contain)
BAD_MESSAGES: list[tuple[str, Corrupt, str]] = [
    ("too_few_parts", lambda p: p[:2], "expected 3 message parts"),
    ("too_many_parts", lambda p: [*p, b"x"], "got 4"),
    ("topic_prefix", _frames(topic=b"img/cam0"), "does not start with b'mask/'"),
    ("topic_mismatch", _frames(topic=b"mask/cam1"), "does not match stream_id 'cam0'"),
    ("not_json", _frames(header=b"{not json"), "not valid UTF-8 JSON"),
    ("not_utf8", _frames(header=b"\xff\xfe"), "not valid UTF-8 JSON"),
    ("json_array", _frames(header=b"[1, 2]"), "must be a JSON object"),
    ("huge_header", _frames(header=b" " * 70_000 + b"{}"), "limit"),
    ("wrong_schema", _set("schema", "roadseg.depth"), "wrong schema 'roadseg.depth'"),
    ("no_schema", _delete("schema"), "missing field schema"),
    ("version_2", _set("version", 2), "unsupported roadseg.mask version 2 (this decoder supports: 1)"),
    ("missing_seq", _delete("seq"), "missing field seq"),
    ("seq_string", _set("seq", "7"), "field seq must be integer"),
    ("height_bool", _set("height", True), "field height must be integer"),
    ("seq_float", _set("seq", 1.5), "field seq must be integer"),
    ("valid_int", _set("valid", 1), "field valid must be boolean"),
    ("reason_int", _set("invalid_reason", 3), "field invalid_reason must be string or null"),
    ("negative_seq", _set("seq", -1), "field seq must be >= 0"),
    ("zero_batch", _set("batch_size", 0), "field batch_size must be >= 1"),
    (
        "empty_stream",
        lambda p: _frames(topic=b"mask/")(_set("stream_id", "")(p)),
        "stream_id must not be empty",
    ),
    ("zero_height", _set("height", 0), "mask size 0x64 out of range"),
    ("huge_width", _set("width", 10**9), "out of range"),
    ("bad_encoding", _set("encoding", "u8-png"), "field encoding: unsupported 'u8-png'"),
    ("timings_missing", _delete("timings"), "missing field timings"),
    ("timing_field", _json(lambda h: h["timings"].pop("queue_ms")), "missing field timings.queue_ms"),
    (
        "timing_type",
        _json(lambda h: h["timings"].update(inference_ms="9")),
        "field timings.inference_ms must be number",
    ),
    ("timings_list", _set("timings", [1, 2]), "field timings must be object"),
    (
        "iou_item",
        _json(lambda h: h["iou"]["per_class"].__setitem__(2, "x")),
        "field iou.per_class[2] must be number",
    ),
    (
        "iou_length",
        _json(lambda h: h["iou"].update(per_class=[0.1])),
        "field iou.per_class has 1 entries, expected 8",
    ),
    ("iou_mean", _json(lambda h: h["iou"].pop("mean")), "missing field iou.mean"),
    ("classes_type", _set("classes", "flat"), "field classes must be array"),
    ("classes_item", _set("classes", ["void", 1]), "field classes[1] must be string"),
    ("classes_empty", _set("classes", []), "field classes must list 1..256 names"),
    (
        "class_id_too_big",
        _json(lambda h: h.update(classes=list(CLASS_NAMES[:5]), iou=None)),
        "class id 7 but header lists 5 classes",
    ),
    ("zlib_corrupt", _frames(payload=b"this is not zlib"), "u8-zlib payload is corrupt"),
    ("zlib_truncated", lambda p: [p[0], p[1], p[2][: len(p[2]) // 2]], "truncated"),
    ("zlib_trailing", lambda p: [p[0], p[1], p[2] + b"junk"], "4 trailing bytes"),
    ("zlib_too_big", _set("height", 47), "expected height*width = 47*64 = 3008"),
]


@pytest.mark.parametrize(
    "corrupt, expected", [(c, e) for _, c, e in BAD_MESSAGES], ids=[n for n, _, _ in BAD_MESSAGES]
)
def test_decode_rejects_bad_messages(corrupt: Callable[[list[bytes]], list[bytes]], expected: str) -> None:
    with pytest.raises(SchemaError) as info:
        decode(corrupt(make_parts()))
    assert expected in str(info.value)
    assert isinstance(info.value, ValueError)


def test_decode_rejects_nan_which_python_json_would_accept() -> None:
    parts = make_parts()
    text = parts[1].replace(b'"queue_ms":1.5', b'"queue_ms":NaN')
    assert text != parts[1]
    with pytest.raises(SchemaError, match="header contains NaN, which is not JSON"):
        decode([parts[0], text, parts[2]])


def test_decode_rejects_raw_payload_of_wrong_size_and_bad_class_ids() -> None:
    parts = make_parts(encoding=Encoding.RAW)
    with pytest.raises(SchemaError, match=r"u8-raw payload decodes to 3071 bytes, expected height\*width"):
        decode([parts[0], parts[1], parts[2][:-1]])
    bad = bytearray(parts[2])
    bad[100] = NUM_CLASSES + 1
    with pytest.raises(SchemaError, match="class id 9 but header lists 8 classes"):
        decode([parts[0], parts[1], bytes(bad)])


def test_encode_side_validation() -> None:
    with pytest.raises(SchemaError, match="2-D uint8"):
        encode_mask(make_mask().astype(np.int32), Encoding.RAW)
    with pytest.raises(SchemaError, match="2-D uint8"):
        encode_mask(np.zeros((4, 4, 3), np.uint8), Encoding.RAW)
    with pytest.raises(SchemaError, match="class id 8"):
        encode_mask(np.full((4, 4), NUM_CLASSES, np.uint8), Encoding.ZLIB)
    with pytest.raises(SchemaError, match="not JSON-serialisable"):
        encode_message(make_header(timings=StageTimings(math.nan, 0.0, 0.0, 0.0)), make_mask())
    with pytest.raises(SchemaError, match="mask shape"):
        encode_message(make_header(), make_mask(10, 10))
    with pytest.raises(SchemaError, match="u8-raw payload is 5 bytes"):
        encode(make_header(encoding=Encoding.RAW), b"12345")
    with pytest.raises(SchemaError, match=r"iou\.per_class has 1 entries"):
        encode_message(make_header(iou=IoUReport((0.5,), 0.5)), make_mask())


# --------------------------------------------------------------------------- transport


def test_publisher_to_subscriber_in_order_with_correct_masks(
    publisher: MaskPublisher, connect: Callable[..., MaskSubscriber]
) -> None:
    sub = connect()
    count = 20
    for seq in range(count):
        encoding = Encoding.RAW if seq % 2 else Encoding.ZLIB
        assert publisher.send(make_parts(make_mask(shift=seq), seq=seq, encoding=encoding))
    for seq in range(count):
        message = sub.recv(RECV_TIMEOUT_S)
        assert message is not None, f"frame {seq} not delivered"
        assert message.header.seq == seq
        np.testing.assert_array_equal(message.mask, make_mask(shift=seq))
    assert sub.recv(0.05) is None
    assert publisher.sent == count and publisher.dropped_hwm == 0
    assert sub.received == count and sub.rejected == 0


def test_bound_address_resolves_random_port(publisher: MaskPublisher) -> None:
    address = publisher.bound_address
    assert address.startswith("tcp://127.0.0.1:") and not address.endswith(":0")


@pytest.mark.asyncio
async def test_wait_for_subscriber_true_once_subscriber_connects(publisher: MaskPublisher) -> None:
    assert not publisher.has_subscriber()
    sub = MaskSubscriber(publisher.bound_address, ["cam0"])
    try:
        sub.connect()
        assert await publisher.wait_for_subscriber(JOIN_TIMEOUT_S)
        assert await publisher.wait_for_subscriber(JOIN_TIMEOUT_S, "cam0")
        assert not await publisher.wait_for_subscriber(0.05, "cam1")
        assert publisher.subscriptions == {b"mask/cam0": 1, b"status/cam0": 1, b"eos/cam0": 1, b"road/cam0": 1,
                                           b"bev/cam0": 1, b"camera/cam0": 1}
        other = MaskSubscriber(publisher.bound_address, ["cam0"])
        other.connect()
        assert await publisher.wait_for_subscriber(JOIN_TIMEOUT_S, "cam0", count=2)
        other.close()
        assert await _eventually(lambda: publisher.subscriber_count("cam0") == 1)
        # Sent right after the join: the slow-joiner problem would lose exactly this frame.
        assert publisher.send(make_parts(seq=0))
        message = sub.recv(RECV_TIMEOUT_S)
        assert message is not None and message.header.seq == 0
    finally:
        sub.close()
    assert await _eventually(lambda: not publisher.has_subscriber()), "unsubscription on disconnect not seen"


async def _eventually(condition: Callable[[], bool]) -> bool:
    deadline = time.monotonic() + RECV_TIMEOUT_S
    while not condition():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.01)
    return True


@pytest.mark.asyncio
async def test_wait_for_subscriber_false_on_timeout(publisher: MaskPublisher) -> None:
    start = time.monotonic()
    assert not await publisher.wait_for_subscriber(0.2)
    assert 0.2 <= time.monotonic() - start < 2.0


@pytest.mark.asyncio
async def test_wait_for_subscriber_does_not_block_the_loop(publisher: MaskPublisher) -> None:
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0.01)

    task = asyncio.create_task(ticker())
    assert not await publisher.wait_for_subscriber(0.2)
    task.cancel()
    assert ticks >= 5


def test_stream_filtering_by_topic(publisher: MaskPublisher, connect: Callable[..., MaskSubscriber]) -> None:
    only_cam0 = connect(["cam0"])
    everything = connect()
    sent = [("cam1", 0), ("cam0rear", 0), ("cam0", 0), ("cam1", 1), ("cam0", 1)]
    for stream_id, seq in sent:
        assert publisher.send(make_parts(stream_id=stream_id, seq=seq))
    got = [only_cam0.recv(RECV_TIMEOUT_S) for _ in range(2)]
    assert [(m.header.stream_id, m.header.seq) for m in got if m] == [("cam0", 0), ("cam0", 1)]
    assert only_cam0.recv(0.05) is None  # "cam0rear" shares the "mask/cam0" prefix but is not ours
    assert only_cam0.stream_ids() == ["cam0"] and only_cam0.rejected == 0
    got = [everything.recv(RECV_TIMEOUT_S) for _ in sent]
    assert [(m.header.stream_id, m.header.seq) for m in got if m] == sent
    assert everything.stream_ids() == ["cam0", "cam0rear", "cam1"]


# --------------------------------------------------------------------------- health


def test_alive_flips_after_timeout(
    publisher: MaskPublisher, connect: Callable[..., MaskSubscriber], clock: FakeClock
) -> None:
    sub = connect(alive_timeout_s=0.5, clock=clock)
    unknown = sub.status("cam0")
    assert not unknown.alive and not unknown.valid and unknown.last_seq == -1
    deliver(publisher, sub, make_parts(seq=3))
    status = sub.status("cam0")
    assert status.alive and status.valid and status.last_seq == 3 and status.age_ms == 0.0
    clock.advance_ms(499)
    assert sub.status("cam0").alive
    clock.advance_ms(2)
    status = sub.status("cam0")
    assert not status.alive and not status.valid
    assert status.age_ms == pytest.approx(501.0)
    deliver(publisher, sub, make_parts(seq=4))
    assert sub.status("cam0").alive


def test_rate_and_min_rate(
    publisher: MaskPublisher, connect: Callable[..., MaskSubscriber], clock: FakeClock
) -> None:
    strict = connect(clock=clock, min_rate_hz=15.0)
    relaxed = connect(clock=clock, min_rate_hz=5.0)
    for seq in range(RATE_WINDOW_MESSAGES + 5):  # more than the window: the rate must not dilute
        clock.advance_ms(50 if seq < 5 else 100)  # 20 Hz at first, then 10 Hz
        assert publisher.send(make_parts(seq=seq))
        for sub in (strict, relaxed):
            assert sub.recv(RECV_TIMEOUT_S) is not None
    assert strict.status("cam0").rate_hz == pytest.approx(10.0)
    assert strict.status("cam0").alive and not strict.status("cam0").valid  # 10 Hz < 15 Hz required
    assert relaxed.status("cam0").valid


def test_gaps_count_seq_jumps(publisher: MaskPublisher, connect: Callable[..., MaskSubscriber]) -> None:
    sub = connect()
    for seq, dropped_before in [(0, 0), (1, 0), (2, 0), (5, 2), (6, 0), (9, 0)]:
        deliver(publisher, sub, make_parts(seq=seq, dropped_before=dropped_before))
    status = sub.status("cam0")
    assert (status.gaps, status.missed, status.dropped_upstream, status.last_seq) == (2, 4, 2, 9)


def test_seq_restart_is_not_a_gap(publisher: MaskPublisher, connect: Callable[..., MaskSubscriber]) -> None:
    sub = connect()
    for seq in (10, 11, 0, 1):
        deliver(publisher, sub, make_parts(seq=seq))
    status = sub.status("cam0")
    assert status.gaps == 0 and status.last_seq == 1


def test_valid_follows_header_flag(publisher: MaskPublisher, connect: Callable[..., MaskSubscriber]) -> None:
    sub = connect()
    message = deliver(publisher, sub, make_parts(seq=0, valid=False, invalid_reason="inference failed"))
    assert message.header.invalid_reason == "inference failed"
    assert sub.status("cam0").alive and not sub.status("cam0").valid
    deliver(publisher, sub, make_parts(seq=1))
    assert sub.status("cam0").valid


def test_malformed_message_is_rejected_and_next_good_one_arrives(
    publisher: MaskPublisher, connect: Callable[..., MaskSubscriber]
) -> None:
    sub = connect()
    good = make_parts(seq=7)
    assert publisher.send([good[0], b"{garbage", good[2]])
    assert publisher.send([good[0]])  # wrong part count
    assert publisher.send([good[0], good[1], b"not zlib"])
    message = deliver(publisher, sub, good)
    assert message.header.seq == 7
    assert sub.rejected == 3 and sub.received == 1
    assert sub.status("cam0").last_seq == 7


# --------------------------------------------------------------------------- publisher edge cases


def test_bind_address_in_use_names_address(publisher: MaskPublisher) -> None:
    address = publisher.bound_address
    other = MaskPublisher(address)
    with pytest.raises(PublisherError, match="already in use") as info:
        other.bind()
    assert address in str(info.value)
    other.close()


def test_bind_invalid_address_names_address() -> None:
    pub = MaskPublisher("tcp://no-port-here")
    with pytest.raises(PublisherError, match="tcp://no-port-here"):
        pub.bind()
    pub.close()


def test_close_twice_and_use_after_close(publisher: MaskPublisher) -> None:
    sub = MaskSubscriber(publisher.bound_address)
    sub.connect()
    sub.close()
    sub.close()
    with pytest.raises(RuntimeError, match="closed"):
        sub.recv(0.01)
    publisher.close()
    publisher.close()
    with pytest.raises(PublisherError, match="closed"):
        publisher.send(make_parts())
    unbound = MaskPublisher(ANY_PORT)
    with pytest.raises(PublisherError, match="not bound"):
        unbound.send(make_parts())
    unbound.close()


def _stalled_subscriber(ctx: zmq.Context, address: str) -> zmq.Socket:
    sock = ctx.socket(zmq.SUB)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVHWM, 1)
    sock.setsockopt(zmq.RCVBUF, 64 * 1024)
    sock.setsockopt(zmq.SUBSCRIBE, b"mask/")
    sock.connect(address)
    return sock


@pytest.mark.parametrize("nodrop", [True, False])
def test_send_never_blocks_on_a_stalled_subscriber(nodrop: bool) -> None:
    ctx = zmq.Context()
    pub = MaskPublisher(ANY_PORT, send_hwm=1, nodrop=nodrop, context=ctx)
    pub.bind()
    stalled = _stalled_subscriber(ctx, pub.bound_address)
    try:
        join(pub)
        big = make_parts(make_mask(1024, 1024), encoding=Encoding.RAW)
        start = time.monotonic()
        results = [pub.send(big) for _ in range(200)]
        assert time.monotonic() - start < 10.0
        assert pub.sent == results.count(True) and pub.dropped_hwm == results.count(False)
        if nodrop:
            assert pub.dropped_hwm > 0, "XPUB_NODROP should refuse messages once the queue is full"
        else:
            assert pub.dropped_hwm == 0  # lossy per subscriber: silently dropped for it only
    finally:
        stalled.close(linger=0)
        pub.close()
        ctx.term()


# --------------------------------------------------------------------------- command line


def test_cli_prints_one_line_per_message(publisher: MaskPublisher) -> None:
    cmd = [
        sys.executable,
        "-m",
        "decision_bridge.subscriber",
        publisher.bound_address,
        "--stream",
        "cam0",
        "--count",
        "2",
        "--timeout",
        "10",
    ]
    proc = subprocess.Popen(cmd, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        join(publisher, "cam0")
        assert publisher.send(make_parts(seq=0))
        assert publisher.send(make_parts(seq=1, valid=False, invalid_reason="stale"))
        out, err = proc.communicate(timeout=20)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    lines = out.strip().splitlines()
    assert len(lines) == 2
    assert lines[0].startswith("cam0 seq=0 64x48 latency=42.0ms") and "valid=True" in lines[0]
    assert "classes=void,flat,construction,object,nature,sky,human,vehicle" in lines[0]
    assert lines[1].startswith("cam0 seq=1") and "valid=False (stale)" in lines[1]


def test_cli_times_out_without_publisher(capsys: pytest.CaptureFixture[str]) -> None:
    assert subscriber_main(["tcp://127.0.0.1:1", "--timeout", "0.2"]) == 1
    assert "no message for 0.2s" in capsys.readouterr().err
