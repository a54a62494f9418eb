"""``roadseg watch``: the viewer's WebSocket read by a client built on ``websockets`` (not aiohttp), run as
a real process against a real pipeline (demo model, synthetic source) or a real viewer server."""

from __future__ import annotations

import asyncio
import json
import socket
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from PIL import Image

from decision_bridge.subscriber import MaskSubscriber
from models.backends.common import Precision
from models.classes import NUM_CLASSES, PALETTE
from stream.config import PipelineConfig
from stream.pipeline import Pipeline
from tests.pipeline_helpers import LOOPBACK_ANY, running, wait_for
from web_viewer import ViewerHub, ViewerServer
from web_viewer.client import EXIT_BAD_INPUT, EXIT_FAILED, WatchError, parse_target, safe_name, telemetry_line
from web_viewer.security import ViewerSecurity

pytestmark = pytest.mark.timeout(180)

ROOT = Path(__file__).resolve().parent.parent
WATCH = [sys.executable, "-m", "stream.cli", "watch"]
TOKEN = "watch-token-0123456789abcdef"
SEQ = r"seq=(\d+)"


def config(**overrides: Any) -> PipelineConfig:
    """A paced synthetic stream with ground truth, viewer on a free loopback port."""
    base: dict[str, Any] = dict(sources=("cam=synthetic:seed=1,size=256x128,frames=4000",), model="demo",
                                precision=Precision.FP32, zmq_address=None, viewer=("127.0.0.1", 0),
                                stats_interval_s=0, auto_max_batch=True, replay_rate=15.0)
    return PipelineConfig(**{**base, **overrides})


async def viewer_url(pipeline: Pipeline, task: asyncio.Task[Any]) -> str:
    await wait_for(lambda: pipeline.viewer_port is not None or task.done(), timeout_s=60, what="viewer")
    if task.done():
        task.result()
    await wait_for(lambda: pipeline.telemetry.frames >= 1, timeout_s=60, what="first frame")
    return f"http://127.0.0.1:{pipeline.viewer_port}/"


async def watch(*args: str, timeout: float = 90) -> tuple[int, str, str]:
    """``roadseg watch ARGS`` as a real process, without blocking the loop the pipeline runs on."""
    proc = await asyncio.create_subprocess_exec(*WATCH, *args, cwd=ROOT, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.PIPE)
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


@pytest.fixture
async def pipeline_url() -> AsyncIterator[tuple[Pipeline, str]]:
    async with running(config()) as (pipeline, task):
        yield pipeline, await viewer_url(pipeline, task)


# ---------------------------------------------------------------- against a real pipeline


async def test_watch_prints_one_telemetry_line_per_frame_with_increasing_seq(
        pipeline_url: tuple[Pipeline, str]) -> None:
    _, url = pipeline_url
    code, out, err = await watch(url, "--count", "8", "--timeout", "60")
    assert code == 0, err
    lines = out.splitlines()
    assert len(lines) == 8, out
    seqs = [int(line.split("seq=")[1].split()[0]) for line in lines]
    assert seqs == sorted(set(seqs)), seqs  # strictly increasing: newer frames only, none twice
    for line in lines:
        assert line.startswith("cam seq=")
        for field in ("latency=", "queue=", "pre=", "infer=", "post=", "fps=", "state=live", "valid=yes",
                      "miou=", "q=80", "size=256x128", "jpeg=", "mask="):
            assert field in line, (field, line)
    assert "connected to ws://127.0.0.1:" in err and "streams: cam" in err


async def test_watch_saves_frames_masks_telemetry_and_a_video_that_match_the_bridge(tmp_path: Path) -> None:
    # The ZeroMQ bridge is an independent path for the same masks: what the viewer sent must equal it.
    cfg = config(zmq_address=LOOPBACK_ANY)
    async with running(cfg) as (pipeline, task):
        url = await viewer_url(pipeline, task)
        assert pipeline.zmq_address is not None
        sub = MaskSubscriber(pipeline.zmq_address)
        sub.connect()
        bridge: dict[int, np.ndarray] = {}

        async def collect() -> None:
            while True:
                message = sub.recv(timeout_s=0)
                if message is None:
                    await asyncio.sleep(0.005)
                else:
                    bridge[message.header.seq] = message.mask

        collector = asyncio.create_task(collect())
        try:
            await wait_for(lambda: bool(bridge), timeout_s=30, what="a mask over ZeroMQ")
            code, out, err = await watch(url, "--save", str(tmp_path / "frames"), "--video",
                                         str(tmp_path / "cam.mp4"), "--count", "6", "--json")
            await asyncio.sleep(0.3)  # the bridge publishes before the viewer: its masks are all in
        finally:
            collector.cancel()
            sub.close()
    assert code == 0, err
    headers = [json.loads(line) for line in out.splitlines()]
    assert len(headers) == 6 and all(h["v"] == 2 and h["stream"] == "cam" for h in headers)
    folder = tmp_path / "frames" / "cam"
    logged = [json.loads(line) for line in (folder / "telemetry.jsonl").read_text().splitlines()]
    assert [h["seq"] for h in logged] == [h["seq"] for h in headers]
    compared = 0
    for header in headers:
        stem = f"{header['seq']:06d}"
        image = cv2.imread(str(folder / f"{stem}.jpg"))
        assert image is not None and image.shape == (128, 256, 3)
        with Image.open(folder / f"{stem}_mask.png") as png:
            assert png.mode == "P"  # palette PNG: the class colours in any viewer, the ids as pixel values
            palette = png.getpalette()
            assert palette is not None
            assert np.array(palette[:3 * NUM_CLASSES]).reshape(-1, 3).tolist() == PALETTE.tolist()
            ids = np.array(png)
        assert ids.shape == (128, 256) and int(ids.max()) < NUM_CLASSES
        if header["seq"] in bridge:
            assert np.array_equal(ids, bridge[header["seq"]]), header["seq"]
            compared += 1
    assert compared >= 3, (sorted(bridge), [h["seq"] for h in headers])
    video = cv2.VideoCapture(str(tmp_path / "cam.mp4"))
    try:
        frames = 0
        while True:
            ok, frame = video.read()
            if not ok:
                break
            assert frame.shape == (128, 256, 3)
            frames += 1
    finally:
        video.release()
    assert frames == 6


async def test_watch_follows_one_stream_of_several(tmp_path: Path) -> None:
    cfg = config(sources=("a=synthetic:seed=1,size=256x128,frames=4000", "b=synthetic:seed=2,size=256x128,frames=4000"))
    async with running(cfg) as (pipeline, task):
        url = await viewer_url(pipeline, task)
        code, out, err = await watch(url, "--stream", "b", "--count", "5")
    assert code == 0, err
    assert [line.split()[0] for line in out.splitlines()] == ["b"] * 5


# ---------------------------------------------------------------- refusals and errors


async def feed(hub: ViewerHub) -> None:
    image, mask = np.zeros((64, 96, 3), np.uint8), np.ones((64, 96), np.uint8)
    seq = 0
    while True:
        hub.offer("cam", image, mask, {"seq": seq})
        seq += 1
        await asyncio.sleep(0.05)


async def test_watch_needs_the_right_token_and_says_so() -> None:
    hub = ViewerHub()
    server = ViewerServer(hub, "127.0.0.1", 0, security=ViewerSecurity(token=TOKEN))
    port = await server.start()
    feeder = asyncio.create_task(feed(hub))
    try:
        url = f"http://127.0.0.1:{port}/"
        code, _, err = await watch(url, "--token", "wrong-token-0123456789abcdef", "--count", "1")
        assert code == EXIT_BAD_INPUT and "refused the token (401" in err, err
        assert "wrong-token" not in err  # never echo a secret
        code, _, err = await watch(url, "--count", "1")
        assert code == EXIT_BAD_INPUT and "needs a token (401" in err, err
        code, out, err = await watch(f"{url}?token={TOKEN}", "--count", "2")  # the URL the viewer logs
        assert code == 0 and len(out.splitlines()) == 2, err
        code, out, err = await watch(f"127.0.0.1:{port}", "--token", TOKEN, "--count", "1")
        assert code == 0 and out.startswith("cam seq="), err
    finally:
        feeder.cancel()
        await server.close()
        await hub.close()


async def test_watch_reports_an_unreachable_server_and_a_bad_url() -> None:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    code, _, err = await watch(f"http://127.0.0.1:{port}/", "--count", "1")
    assert code == EXIT_FAILED and f"cannot reach the viewer at ws://127.0.0.1:{port}/ws" in err, err
    code, _, err = await watch("ftp://example.org/", "--count", "1")
    assert code == EXIT_BAD_INPUT and "bad URL" in err, err
    code, _, err = await watch("http://127.0.0.1:99999/", "--count", "1")
    assert code == EXIT_BAD_INPUT and "bad URL" in err, err


async def test_watch_exits_1_when_the_viewer_goes_silent() -> None:
    hub = ViewerHub()
    server = ViewerServer(hub, "127.0.0.1", 0)
    port = await server.start()
    try:
        code, _, err = await watch(f"http://127.0.0.1:{port}/", "--timeout", "1")
    finally:
        await server.close()
        await hub.close()
    assert code == EXIT_FAILED and "no message from the viewer" in err, err


# ---------------------------------------------------------------- pieces


@pytest.mark.parametrize(("url", "token", "expected"), [
    ("http://127.0.0.1:8080/", None, ("ws://127.0.0.1:8080/ws", None)),
    ("http://127.0.0.1:8080/?token=abc", None, ("ws://127.0.0.1:8080/ws", "abc")),
    ("http://127.0.0.1:8080/?token=abc", "given", ("ws://127.0.0.1:8080/ws", "given")),
    ("https://viewer.example/roadseg/", None, ("wss://viewer.example/roadseg/ws", None)),
    ("ws://[::1]:9000/ws", None, ("ws://[::1]:9000/ws", None)),
    ("localhost:8080", None, ("ws://localhost:8080/ws", None)),
])  # fmt: skip
def test_parse_target(url: str, token: str | None, expected: tuple[str, str | None],
                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ROADSEG_VIEWER_TOKEN", raising=False)
    target = parse_target(url, token)
    assert (target.ws_url, target.token) == expected


def test_parse_target_token_from_the_environment_and_bad_urls(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ROADSEG_VIEWER_TOKEN", "from-env")
    assert parse_target("127.0.0.1:8080").token == "from-env"
    for bad in ("ftp://x/", "http://", "http://host:port/", "http://host:70000/"):
        with pytest.raises(WatchError) as info:
            parse_target(bad)
        assert info.value.code == EXIT_BAD_INPUT


def test_stream_ids_from_the_network_make_safe_folder_names() -> None:
    assert safe_name("front") == "front"
    assert safe_name("../../etc/passwd") == "etc_passwd"
    assert safe_name("..") == "stream" and safe_name("a/b c") == "a_b_c"


def test_telemetry_line_reads_well_without_optional_fields() -> None:
    line = telemetry_line({"stream": "cam", "seq": 3, "quality": 60, "width": 8, "height": 4, "jpeg_bytes": 2048,
                           "mask_bytes": 512, "valid": False, "invalid_reason": "stale_frame"})
    assert line == "cam seq=3 valid=no(stale_frame) q=60 size=8x4 jpeg=2.0KB mask=0.5KB"
