"""decision_bridge survives any byte sequence: decode raises SchemaError and nothing else, and
the reference subscriber counts and skips whatever it cannot decode (issue 10).

Deterministic (seeded) fuzzing of ``decode`` plus crafted messages over a real loopback socket.
"""

from __future__ import annotations

import json
import logging
import random
import subprocess
import sys
from typing import Any

import numpy as np
import pytest
import zmq

from decision_bridge import (
    Encoding,
    IoUReport,
    MaskHeader,
    MaskMessage,
    MaskSubscriber,
    SchemaError,
    StageTimings,
    decode,
    encode_message,
    topic_for,
)
from decision_bridge import subscriber as subscriber_module
from decision_bridge.schema import INT64_MAX, INT64_MIN, MAX_JSON_DEPTH, header_to_json
from models.classes import CLASS_NAMES, NUM_CLASSES

pytestmark = pytest.mark.timeout(30)

RECV_TIMEOUT_S = 5.0
FUZZ_SEED = 20240610
FUZZ_CASES = 3000


def make_mask(height: int = 24, width: int = 32) -> np.ndarray:
    rows = np.arange(height)[:, None] // 3
    cols = np.arange(width)[None, :] // 4
    return ((rows + cols) % NUM_CLASSES).astype(np.uint8)


def make_parts(encoding: Encoding = Encoding.ZLIB, with_iou: bool = True, **overrides: Any) -> list[bytes]:
    mask = make_mask()
    fields: dict[str, Any] = dict(
        stream_id="cam0",
        seq=5,
        frame_name="frankfurt_000000_000294_leftImg8bit.png",
        capture_mono_ns=1_000_000_000,
        capture_wall_ns=1_700_000_000_000_000_000,
        publish_mono_ns=1_040_000_000,
        publish_wall_ns=1_700_000_000_040_000_000,
        height=mask.shape[0],
        width=mask.shape[1],
        encoding=encoding,
        model_id="fastscnn-cityscapes8@3f2a9c1",
        timings=StageTimings(queue_ms=1.5, preprocess_ms=2.25, inference_ms=30.0, postprocess_ms=3.0),
        batch_size=2,
        valid=True,
        invalid_reason=None,
        dropped_before=0,
        iou=IoUReport(tuple(0.5 if i % 3 else None for i in range(len(CLASS_NAMES))), 0.5) if with_iou else None,
    )
    fields.update(overrides)
    return encode_message(MaskHeader(**fields), mask)


def with_header_text(parts: list[bytes], old: bytes, new: bytes) -> list[bytes]:
    assert old in parts[1], (old, parts[1])
    return [parts[0], parts[1].replace(old, new, 1), parts[2]]


def with_field(parts: list[bytes], key: str, raw_value: bytes) -> list[bytes]:
    """Set top-level ``key`` to the raw JSON text ``raw_value`` (which json.dumps could not write)."""
    obj = json.loads(parts[1])
    obj[key] = "@@VALUE@@"
    text = json.dumps(obj).encode().replace(b'"@@VALUE@@"', raw_value)
    return [parts[0], text, parts[2]]


def decodes_or_schema_error(parts: Any) -> MaskMessage | None:
    """decode's contract: a message or SchemaError; any other exception fails with the input."""
    try:
        return decode(parts)
    except SchemaError:
        return None
    except Exception as exc:
        shown = repr(parts)[:300]
        raise AssertionError(f"decode raised {type(exc).__name__}: {exc!s:.200} for {shown}") from exc


def assert_sane(message: MaskMessage) -> None:
    """Whatever decode accepts, a planner can use without tripping over it."""
    header = message.header
    topic_for(header.stream_id)  # encodable: no lone surrogates
    obj = header_to_json(header)
    json.dumps(obj, ensure_ascii=False, allow_nan=False).encode("utf-8")  # no NaN/inf, no lone surrogate
    for key, value in obj.items():
        if isinstance(value, int) and not isinstance(value, bool):
            assert INT64_MIN <= value <= INT64_MAX, (key, value)
    assert message.mask.shape == (header.height, header.width)


# --------------------------------------------------------------------------- crafted inputs


def _nested(depth: int, leaf: bytes = b"0") -> bytes:
    return b"[" * depth + leaf + b"]" * depth


GOOD = make_parts()
SURROGATE = b'"\\ud800"'

# (test id, message, text the SchemaError must contain)
CRAFTED: list[tuple[str, Any, str]] = [
    ("deep_arrays", [GOOD[0], b"[" * 60_000, GOOD[2]], "nests 60000 levels deep"),
    ("deep_objects", [GOOD[0], b'{"a":' * 13_000, GOOD[2]], "nests 13000 levels deep"),
    ("deep_over_size_limit", [GOOD[0], b"[" * 100_000, GOOD[2]], "limit 65536"),
    ("deep_valid_json", with_field(GOOD, "future", _nested(MAX_JSON_DEPTH)), f"limit {MAX_JSON_DEPTH}"),
    ("deep_unterminated_string", [GOOD[0], b'{"a":"' + b"[" * 100 + b"\\" * 3, GOOD[2]], "not valid"),
    ("lone_high_surrogate_stream", with_field(GOOD, "stream_id", SURROGATE), "field stream_id has a lone surrogate"),
    ("lone_low_surrogate_frame", with_field(GOOD, "frame_name", b'"x\\udc00"'), "field frame_name has a lone"),
    ("surrogate_model_id", with_field(GOOD, "model_id", SURROGATE), "field model_id has a lone surrogate"),
    ("surrogate_reason", with_field(GOOD, "invalid_reason", SURROGATE), "field invalid_reason has a lone"),
    ("surrogate_state", with_field(GOOD, "stream_state", SURROGATE), "field stream_state has a lone"),
    ("surrogate_class", with_field(GOOD, "classes", b'["void", "\\udfff"]'), "field classes[1] has a lone"),
    ("surrogate_unknown_key", with_field(GOOD, "future", b'{"x": ' + SURROGATE + b"}"), "field future.x has a"),
    ("surrogate_in_key", with_header_text(GOOD, b'"seq"', b'"\\ud800":1,"seq"'), "key '\\ud800' in the header"),
    ("reversed_pair", with_field(GOOD, "frame_name", b'"\\udc00\\ud800"'), "lone surrogate at index 0"),
    ("seq_1e30", with_field(GOOD, "seq", str(10**30).encode()), "outside the signed 64-bit range"),
    ("seq_2_63", with_field(GOOD, "seq", str(2**63).encode()), "outside the signed 64-bit range"),
    ("wall_below_int64", with_field(GOOD, "capture_wall_ns", str(-(2**63) - 1).encode()), "signed 64-bit"),
    ("int_5000_digits", with_field(GOOD, "future", b"9" * 5000), "outside the signed 64-bit range"),
    ("version_huge", with_field(GOOD, "version", b"1" + b"0" * 40), "outside the signed 64-bit range"),
    ("nan_timing", with_header_text(GOOD, b'"queue_ms":1.5', b'"queue_ms":NaN'), "NaN, which is not JSON"),
    ("infinity", with_field(GOOD, "max_age_ms", b"Infinity"), "Infinity, which is not JSON"),
    ("minus_infinity_unknown", with_field(GOOD, "future", b"[-Infinity]"), "-Infinity, which is not JSON"),
    ("float_overflow", with_field(GOOD, "max_age_ms", b"1e400"), "1e400 overflows a 64-bit float"),
    ("float_overflow_neg", with_field(GOOD, "future", b"-1.5e999"), "overflows a 64-bit float"),
    ("seq_float_huge", with_field(GOOD, "seq", b"1e30"), "field seq must be integer"),
    ("no_parts", [], "got 0"),
    ("not_a_sequence", None, "must be a sequence of frames"),
    ("bytes_not_list", b"abc", "message part 0 must be bytes, got int"),
    ("int_part", [GOOD[0], 3, GOOD[2]], "message part 1 must be bytes, got int"),
    ("str_part", ["mask/cam0", GOOD[1], GOOD[2]], "message part 0 must be bytes, got str"),
    ("none_part", [GOOD[0], GOOD[1], None], "message part 2 must be bytes, got NoneType"),
    ("empty_frames", [b"", b"", b""], "does not start with"),
    ("empty_header", [GOOD[0], b"", GOOD[2]], "not valid UTF-8 JSON"),
    ("encoded_surrogate_bytes", [GOOD[0], b'{"a":"\xed\xa0\x80"}', GOOD[2]], "not valid UTF-8"),
    ("bom", [GOOD[0], b"\xef\xbb\xbf" + GOOD[1], GOOD[2]], "not valid UTF-8 JSON"),
    ("huge_declared_size", with_field(GOOD, "height", b"16384"), "payload"),
]


@pytest.mark.parametrize("parts, expected", [(p, e) for _, p, e in CRAFTED], ids=[n for n, _, _ in CRAFTED])
def test_crafted_messages_raise_schema_error(parts: Any, expected: str) -> None:
    with pytest.raises(SchemaError) as info:
        decode(parts)
    assert expected in str(info.value)
    str(info.value).encode("utf-8")  # the message itself is loggable (no raw lone surrogate)


@pytest.mark.parametrize(
    "parts",
    [
        pytest.param(with_field(GOOD, "future", _nested(MAX_JSON_DEPTH - 1)), id="depth_at_limit"),
        pytest.param(with_field(GOOD, "frame_name", b'"' + b"[{" * 5000 + b'"'), id="brackets_in_string"),
        pytest.param(with_field(GOOD, "frame_name", b'"\\\\ud800 \\"[\\\\"'), id="escaped_backslash_not_escape"),
        pytest.param(with_field(GOOD, "frame_name", b'"\\ud83d\\ude00 ok"'), id="surrogate_pair"),
        pytest.param(with_field(GOOD, "seq", str(INT64_MAX).encode()), id="seq_int64_max"),
        pytest.param(with_field(GOOD, "capture_wall_ns", str(INT64_MIN).encode()), id="wall_int64_min"),
        pytest.param(with_field(GOOD, "max_age_ms", b"1.7976931348623157e308"), id="largest_double"),
        pytest.param(with_header_text(GOOD, b'"seq":5', b'"seq":1,"seq":5'), id="duplicate_key_last_wins"),
        pytest.param([bytearray(GOOD[0]), memoryview(GOOD[1]), zmq.Frame(GOOD[2])], id="buffer_frames"),
    ],
)
def test_edge_cases_that_are_valid(parts: list[Any]) -> None:
    message = decode(parts)
    assert message.header.stream_id == "cam0"
    assert_sane(message)


def test_decoded_strings_and_ints_are_what_was_sent() -> None:
    parts = with_field(with_field(GOOD, "frame_name", b'"\\ud83d\\ude00.png"'), "seq", str(INT64_MAX).encode())
    header = decode(parts).header
    assert header.frame_name == "\U0001f600.png" and header.seq == INT64_MAX


def test_encode_refuses_what_decode_would_reject() -> None:
    """A publisher gets SchemaError too, not UnicodeEncodeError from the topic or a too-big int."""
    with pytest.raises(SchemaError, match="field stream_id has a lone surrogate"):
        make_parts(stream_id="cam\ud800")
    with pytest.raises(SchemaError, match="field frame_name has a lone surrogate"):
        make_parts(frame_name="\udc00")
    with pytest.raises(SchemaError, match="field seq must fit a signed 64-bit integer"):
        make_parts(seq=2**64)
    with pytest.raises(SchemaError, match="field capture_wall_ns must fit a signed 64-bit integer, got a"):
        make_parts(capture_wall_ns=-(10**5000))


def test_deep_nesting_cannot_reach_the_c_stack_even_with_a_huge_recursion_limit() -> None:
    """The depth check runs before json.loads, so the recursive C parser never goes deep,
    however high an application sets the recursion limit (which would otherwise let it
    overflow the C stack and kill the process). In a subprocess: a crash must not take pytest."""
    code = (
        "import sys; sys.setrecursionlimit(10**7)\n"
        "from decision_bridge import decode, SchemaError\n"
        "for header in (b'[' * 65536, b'{\"a\":' * 13107, b'[{\"a\":' * 10922):\n"
        "    try:\n"
        "        decode([b'mask/cam0', header, b''])\n"
        "    except SchemaError as exc:\n"
        "        assert 'nests' in str(exc), exc\n"
        "    else:\n"
        "        raise AssertionError('accepted')\n"
        "print('ok')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=20)
    assert done.returncode == 0 and done.stdout.strip() == "ok", (done.returncode, done.stderr[-2000:])


# --------------------------------------------------------------------------- seeded fuzzing

NASTY_VALUES: list[bytes] = [
    b"null",
    b"true",
    b"0",
    b"-1",
    b"1.5",
    b"-0.0",
    b'""',
    b'"cam0"',
    b"[]",
    b"{}",
    b'["void"]',
    b'{"per_class": [], "mean": null}',
    SURROGATE,
    b'"\\udfff"',
    b'"\\ud83d\\ude00"',
    b'"\\u0000"',
    b'"\\x"',
    b"NaN",
    b"Infinity",
    b"-Infinity",
    b"1e400",
    b"-1e400",
    b"1e-400",
    str(INT64_MAX).encode(),
    str(INT64_MAX + 1).encode(),
    str(INT64_MIN).encode(),
    str(INT64_MIN - 1).encode(),
    str(10**30).encode(),
    b"9" * 4400,
    b'"' + b"x" * 60_000 + b'"',
    _nested(MAX_JSON_DEPTH - 1),
    _nested(MAX_JSON_DEPTH),
    b'{"a":' * 500 + b"1" + b"}" * 500,
    b"[" * 5000,
    b"16384",
    b"65536",
    b"true, 1",
]
# Every key a current header has (fields added later are fuzzed too), plus one it does not.
HEADER_KEYS = [*json.loads(GOOD[1]), "unknown_key"]


def _flip(data: bytes, rng: random.Random) -> bytes:
    buf = bytearray(data)
    for _ in range(rng.randint(1, 8)):
        if buf:
            buf[rng.randrange(len(buf))] = rng.randrange(256)
    return bytes(buf)


def _splice(data: bytes, rng: random.Random) -> bytes:
    """Replace a random slice with a random JSON-ish token: structure-aware corruption."""
    if not data:
        return rng.choice(NASTY_VALUES)
    start = rng.randrange(len(data))
    end = min(len(data), start + rng.randint(0, 12))
    return data[:start] + rng.choice([*NASTY_VALUES[:12], b"{", b"}", b"[", b"]", b'"', b"\\", b","]) + data[end:]


def _mutate(rng: random.Random, bases: list[list[bytes]]) -> Any:
    parts = list(rng.choice(bases))
    topic, header, payload = parts
    op = rng.randrange(13)
    if op == 0:  # noise in every frame
        return [rng.randbytes(rng.randint(0, 64)) for _ in range(3)]
    if op == 1:  # wrong part count, plausible frames
        return [rng.choice([topic, header, payload, rng.randbytes(8)]) for _ in range(rng.choice([0, 1, 2, 4, 5]))]
    if op == 2:
        return [topic, _flip(header, rng), payload]
    if op == 3:
        return [topic, header, _flip(payload, rng)]
    if op == 4:  # truncation anywhere
        which = rng.randrange(3)
        parts[which] = parts[which][: rng.randrange(len(parts[which]) + 1)]
        return parts
    if op == 5:
        return [topic, _splice(header, rng), payload]
    if op in (6, 7):  # a field set to a nasty value
        return with_field(parts, rng.choice(HEADER_KEYS), rng.choice(NASTY_VALUES))
    if op == 8:  # a nested field set to a nasty value
        key, inner = rng.choice([("timings", "queue_ms"), ("timings", "inference_ms"), ("iou", "mean")])
        obj = json.loads(header)
        if isinstance(obj.get(key), dict):
            obj[key][inner] = "@@V@@"
        text = json.dumps(obj).encode().replace(b'"@@V@@"', rng.choice(NASTY_VALUES))
        return [topic, text, payload]
    if op == 9:  # the topic: other stream, surrogate bytes, noise
        topic = rng.choice([b"mask/", b"mask/cam1", b"mask/\xed\xa0\x80", b"mask/" + rng.randbytes(6)])
        return [topic, header, payload]
    if op == 10:  # non-bytes frames
        parts[rng.randrange(3)] = rng.choice([None, 0, 7, "mask/cam0", 1.5, [], [b"x"], object()])  # type: ignore[call-overload]
        return parts
    if op == 11:  # a surrogate escape (lone, pair or reversed) inside any string of the header
        quotes = [i for i, byte in enumerate(header) if byte == ord('"')]
        at = rng.choice(quotes) + 1
        escape = rng.choice([b"\\ud800", b"\\udfff", b"\\ud83d\\ude00", b"\\ude00\\ud83d", b"\\ud83d"])
        return [topic, header[:at] + escape + header[at:], payload]
    return [topic, _splice(_splice(header, rng), rng), _flip(payload, rng) if rng.random() < 0.3 else payload]


def test_seeded_fuzz_decode_raises_only_schema_error() -> None:
    rng = random.Random(FUZZ_SEED)
    bases = [
        make_parts(),
        make_parts(Encoding.RAW),
        make_parts(with_iou=False, valid=False, invalid_reason="stale_frame"),
    ]
    accepted = 0
    for _ in range(FUZZ_CASES):
        message = decodes_or_schema_error(_mutate(rng, bases))
        if message is not None:
            accepted += 1
            assert_sane(message)
    # The mutations mostly break messages, but some harmless ones (a flipped pixel, an unknown
    # key set to a nasty value) must still decode: the fuzzer is not just feeding garbage.
    assert 0 < accepted < FUZZ_CASES // 2, accepted


# --------------------------------------------------------------------------- subscriber


def test_subscriber_counts_and_skips_what_decode_does_not_promise(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Defence in depth: even a decoder bug (not SchemaError) is counted and skipped."""
    sub = MaskSubscriber("tcp://127.0.0.1:1")  # never connected: _accept needs no socket

    def broken(parts: Any) -> MaskMessage:
        raise RecursionError("decoder bug")

    monkeypatch.setattr(subscriber_module, "decode", broken)
    with caplog.at_level(logging.ERROR, logger=subscriber_module.__name__):
        assert sub._accept(GOOD) is None
    assert sub.rejected == 1 and sub.received == 0
    assert "decoder bug, RecursionError instead of SchemaError" in caplog.text
    monkeypatch.undo()
    assert sub._accept(GOOD) is not None and sub.received == 1
    sub.close()


def _crafted_for_socket(rng: random.Random) -> list[list[bytes]]:
    """Bad messages whose topic the subscriber subscribed to (mask/), so each one reaches it."""
    good = make_parts(seq=7)
    bad = [parts for _, parts, _ in CRAFTED if isinstance(parts, list) and parts]
    bad = [p for p in bad if all(isinstance(x, bytes) for x in p) and p[0].startswith(b"mask/")]
    bad += [
        [b"mask/cam0"],
        [b"mask/cam0", good[1]],
        [*good, b"extra"],
        [b"mask/\xed\xa0\x80", with_field(good, "stream_id", SURROGATE)[1], good[2]],
        *([b"mask/" + rng.randbytes(4), rng.randbytes(rng.randint(0, 200)), rng.randbytes(32)] for _ in range(20)),
    ]
    return bad


def test_real_socket_subscriber_survives_crafted_messages() -> None:
    rng = random.Random(FUZZ_SEED + 1)
    crafted = _crafted_for_socket(rng)
    ctx = zmq.Context()
    pub = ctx.socket(zmq.XPUB)
    pub.setsockopt(zmq.LINGER, 0)
    pub.setsockopt(zmq.SNDHWM, 10_000)
    port = pub.bind_to_random_port("tcp://127.0.0.1")
    sub = MaskSubscriber(f"tcp://127.0.0.1:{port}", context=ctx)
    try:
        sub.connect()
        # The slow joiner, deterministically: wait until the XPUB has seen the mask subscription.
        assert pub.poll(int(RECV_TIMEOUT_S * 1000)), "subscriber never subscribed"
        subscriptions = set()
        while pub.poll(200):
            subscriptions.add(pub.recv())
        assert b"\x01mask/" in subscriptions, subscriptions
        for parts in crafted:
            pub.send_multipart(parts)
        good = make_parts(seq=7)
        pub.send_multipart(good)
        message = sub.recv(RECV_TIMEOUT_S)
        assert message is not None, f"no valid message after the crafted ones (rejected={sub.rejected})"
        assert message.header.seq == 7
        np.testing.assert_array_equal(message.mask, make_mask())
        assert sub.rejected == len(crafted) and sub.received == 1
        assert sub.status("cam0").last_seq == 7
    finally:
        sub.close()
        pub.close(linger=0)
        ctx.term()

