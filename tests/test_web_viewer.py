"""Tests for web_viewer: real aiohttp server on a random loopback port, real clients, real Chromium."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import os
import socket
import statistics
import struct
import threading
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import cv2
import numpy as np
import pytest
import pytest_asyncio

from models.classes import CLASS_NAMES, PALETTE, Category
from web_viewer import BindError, ViewerError, ViewerHub, ViewerServer, parse_bind, unpack_frame
from web_viewer import clients as clients_module
from web_viewer.app import STATIC_DIR
from web_viewer.hub import TASK_PREFIX
from web_viewer.render import MAX_HEADER_BYTES, Picture, render_frame, render_packet

pytestmark = pytest.mark.timeout(60)

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip
H, W = 480, 640
# Vehicle colour (0, 0, 142) blended at alpha 0.5 over black.
VEHICLE_ON_BLACK_RGB = (0, 0, 71)
COLOUR_TOLERANCE = 12
# [width, height, r, g, b, a] of the stream canvas' centre pixel.
CANVAS_CENTRE_PIXEL_JS = """() => {
  const c = document.querySelector('.panel canvas');
  return [c.width, c.height, ...c.getContext('2d').getImageData(c.width / 2, c.height / 2, 1, 1).data];
}"""


class CountingExecutor(concurrent.futures.ThreadPoolExecutor):
    """A real thread pool that records how many jobs ran, how long, and on which threads."""

    def __init__(self) -> None:
        super().__init__(max_workers=2)
        self.submitted = 0
        self.durations: list[float] = []
        self.threads: set[int] = set()

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> concurrent.futures.Future[Any]:
        self.submitted += 1

        def timed() -> Any:
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.durations.append(time.perf_counter() - start)
                self.threads.add(threading.get_ident())

        return super().submit(timed)


def black_vehicle_frame() -> tuple[np.ndarray, np.ndarray]:
    image = np.zeros((H, W, 3), dtype=np.uint8)
    return image, np.full((H, W), Category.VEHICLE, dtype=np.uint8)


def noisy_frame(seed: int) -> tuple[np.ndarray, np.ndarray]:
    # Noise does not compress: ~100s of KB per JPEG, so a client that does not
    # read fills its socket buffers within a few frames.
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
    return image, rng.integers(0, 8, (H, W), dtype=np.uint8)


async def wait_until(predicate: Callable[[], bool], timeout: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.005)


async def receive_hello(ws: aiohttp.ClientWebSocketResponse) -> dict[str, Any]:
    msg = await ws.receive(timeout=5)
    assert msg.type == aiohttp.WSMsgType.TEXT, msg
    hello: dict[str, Any] = msg.json()
    assert hello["type"] == "hello"
    return hello


def decode_packet(message: bytes) -> tuple[dict[str, Any], np.ndarray, np.ndarray]:
    """(header, camera RGB, category ids) of one v2 frame message."""
    header, jpeg, png = unpack_frame(message)
    image = cv2.imdecode(np.frombuffer(jpeg, dtype=np.uint8), cv2.IMREAD_COLOR)
    assert image is not None, "JPEG did not decode"
    ids = cv2.imdecode(np.frombuffer(png, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
    assert ids is not None and ids.dtype == np.uint8 and ids.shape == image.shape[:2], "mask PNG"
    return header, cv2.cvtColor(image, cv2.COLOR_BGR2RGB), ids


async def receive_frame(ws: aiohttp.ClientWebSocketResponse) -> tuple[dict[str, Any], np.ndarray]:
    msg = await ws.receive(timeout=5)
    assert msg.type == aiohttp.WSMsgType.BINARY, msg
    header, rgb, _ = decode_packet(msg.data)
    return header, rgb


def encoded_count_is(hub: ViewerHub, count: int) -> Callable[[], bool]:
    return lambda: hub.stats["frames_encoded"] == count


def client_stats(hub: ViewerHub, index: int) -> dict[str, int]:
    stats: dict[str, int] = hub.stats["per_client"][index]
    return stats


def assert_colour(rgb: Any, expected: tuple[int, int, int]) -> None:
    assert all(abs(int(a) - b) <= COLOUR_TOLERANCE for a, b in zip(rgb, expected, strict=True)), (
        tuple(rgb),
        expected,
    )


@pytest_asyncio.fixture
async def viewer() -> AsyncIterator[tuple[ViewerHub, CountingExecutor, str]]:
    executor = CountingExecutor()
    hub = ViewerHub(executor=executor)
    server = ViewerServer(hub, "127.0.0.1", 0)
    port = await server.start()
    yield hub, executor, f"http://127.0.0.1:{port}"
    await server.close()
    await hub.close()
    executor.shutdown(wait=True)


# ---------------------------------------------------------------- protocol


@pytest.mark.asyncio
async def test_hello_then_frames_in_wire_format(viewer: tuple[ViewerHub, CountingExecutor, str]) -> None:
    hub, executor, url = viewer
    hub.offer("cam0", *black_vehicle_frame(), {"seq": 1})  # before any client: cached for it
    async with aiohttp.ClientSession() as session, session.ws_connect(f"{url}/ws") as ws:
        hello = await receive_hello(ws)
        assert [c["name"] for c in hello["classes"]] == list(CLASS_NAMES) and len(hello["classes"]) == 8
        assert [c["color"] for c in hello["classes"]] == PALETTE.tolist()
        assert hello["streams"] == ["cam0"]
        assert hello["v"] == 2 and hello["alpha"] == 0.5 and hello["qualities"] == [80, 60, 40]
        assert hello["tiers"] == ["80", "60", "40", "40@480w"]  # the last: quality 40, half of 960 wide
        header, _ = await receive_frame(ws)
        assert header["seq"] == 1
        info = {"seq": 7, "latency_ms": 12.5, "fps": np.float32(29.5), "miou": float("nan"), "width": 1,
                "jpeg_bytes": -1}
        image, mask = black_vehicle_frame()
        image[:, : W // 2] = (200, 30, 10)  # left half red-ish: the JPEG is the camera image, RGB order
        mask[:, : W // 2] = Category.SKY
        hub.offer("cam0", image, mask, info)
        msg = await ws.receive(timeout=5)
    header, rgb, ids = decode_packet(msg.data)
    sizes = {"jpeg_bytes": header.pop("jpeg_bytes"), "mask_bytes": header.pop("mask_bytes")}
    assert header == {"v": 2, "stream": "cam0", "seq": 7, "width": W, "height": H, "quality": 80,
                      "latency_ms": 12.5, "fps": 29.5, "miou": None}  # fmt: skip
    assert sum(sizes.values()) + 4 < len(msg.data) and min(sizes.values()) > 0
    assert rgb.shape == (H, W, 3)
    assert_colour(rgb[H // 2, W // 4], (200, 30, 10))  # no overlay baked in: the page blends it
    assert_colour(rgb[H // 2, 3 * W // 4], (0, 0, 0))
    assert (ids[:, : W // 2] == Category.SKY).all() and (ids[:, W // 2 :] == Category.VEHICLE).all()
    assert executor.threads and threading.get_ident() not in executor.threads  # encoded off the loop


def test_render_downscales_and_tolerates_mask_resolution_and_bad_ids() -> None:
    image = np.zeros((1080, 1920, 3), dtype=np.uint8)
    image[:, 960:] = 255
    mask = np.full((270, 480), 255, dtype=np.uint8)  # model-resolution mask, "ignore" id
    mask[:, :240] = Category.SKY
    packet = render_packet("c", 3, image, mask, {"x": [1, np.int64(2)]}, max_width=960, jpeg_quality=90)
    header, rgb, ids = decode_packet(packet)
    assert {k: header[k] for k in ("v", "stream", "seq", "width", "height", "quality", "x")} == {
        "v": 2, "stream": "c", "seq": 3, "width": 960, "height": 540, "quality": 90, "x": [1, 2]}
    assert_colour(rgb[270, 100], (0, 0, 0))
    assert_colour(rgb[270, 800], (255, 255, 255))
    assert ids.shape == (540, 960)  # the mask at the JPEG's size
    assert (ids[:, :480] == Category.SKY).all()
    assert (ids[:, 480:] == Category.VOID).all()  # id 255 is sent as void


def test_render_frame_encodes_the_mask_once_per_size_and_a_jpeg_per_picture() -> None:
    image, mask = noisy_frame(3)
    pictures = high_p, low_p, small_p = Picture(80, 320), Picture(40, 320), Picture(40, 160)
    rendered = render_frame("c", 1, image, mask, {"seq": 9}, pictures=pictures)
    assert set(rendered.packets) == set(pictures) and rendered.mask_bytes > 0 and rendered.mask_ms >= 0
    assert rendered.jpeg_bytes[small_p] < rendered.jpeg_bytes[low_p] < rendered.jpeg_bytes[high_p]
    high, low, small = (unpack_frame(rendered.packets[p]) for p in pictures)
    assert low.mask_png == high.mask_png and low.header["quality"] == 40 and high.header["seq"] == 9
    assert (high.header["width"], high.header["height"]) == (320, 240)
    assert (small.header["width"], small.header["height"], small.header["quality"]) == (160, 120, 40)
    (_, _, ids), (_, _, full_ids) = (decode_packet(rendered.packets[p]) for p in (small_p, high_p))
    assert ids.shape == (120, 160) and np.array_equal(ids, full_ids[::2, ::2])  # nearest: ids never mix
    assert small.header["seq"] == 9 and [p.label(320) for p in pictures] == ["80", "40", "40@160w"]


@pytest.mark.parametrize("damage", ["version", "sizes", "short"])
def test_unpack_refuses_packets_that_do_not_add_up(damage: str) -> None:
    packet = render_packet("c", 1, *black_vehicle_frame(), {}, max_width=64, jpeg_quality=50)
    if damage == "short":
        packet = packet[:-1]
    else:
        (length,) = struct.unpack(">I", packet[:4])
        header = json.loads(packet[4 : 4 + length])
        header.update({"v": 1} if damage == "version" else {"mask_bytes": header["mask_bytes"] + 1})
        raw = json.dumps(header).encode()
        packet = struct.pack(">I", len(raw)) + raw + packet[4 + length :]
    with pytest.raises(ValueError, match=r"version|do not match"):
        unpack_frame(packet)


def test_render_caps_oversized_header() -> None:
    image, mask = black_vehicle_frame()
    info = {"blob": "x" * (2 * MAX_HEADER_BYTES), "seq": 5}
    header, _, _ = unpack_frame(render_packet("c", 1, image, mask, info, max_width=960, jpeg_quality=80))
    assert {k: v for k, v in header.items() if not k.endswith("_bytes")} == {
        "v": 2, "stream": "c", "seq": 5, "width": W, "height": H, "quality": 80, "info_truncated": True}


# ---------------------------------------------------------------- latest-only behaviour


@pytest.mark.asyncio
async def test_offer_only_stores_latest_and_non_reading_client_mailbox_stays_at_one(
    viewer: tuple[ViewerHub, CountingExecutor, str],
) -> None:
    hub, executor, url = viewer
    frames = [noisy_frame(i) for i in range(100)]
    async with aiohttp.ClientSession() as session, session.ws_connect(f"{url}/ws") as ws:
        await receive_hello(ws)  # then never read again
        # Burst without yielding: offer() must not encode anything itself.
        offer_times = []
        for seq, (image, mask) in enumerate(frames):
            start = time.perf_counter()
            hub.offer("cam0", image, mask, {"seq": seq})
            offer_times.append(time.perf_counter() - start)
        assert executor.submitted == 0 and hub.stats["pending_replaced"] == 99
        await wait_until(lambda: hub.stats["frames_encoded"] == 1, what="one encode of the burst")
        # Paced: every frame is encoded, the client's socket fills, its mailbox must not grow.
        for seq, (image, mask) in enumerate(frames, start=100):
            hub.offer("cam0", image, mask, {"seq": seq})
            await wait_until(encoded_count_is(hub, seq - 98), what=f"encode of {seq}")
        stats, client = hub.stats, client_stats(hub, 0)
    assert stats["frames_offered"] == 200 and stats["frames_encoded"] == 101
    assert client["mailbox_high_water"] == 1 and client["pending"] <= 1
    assert client["superseded"] > 50, client  # the socket is full: almost everything was replaced
    assert client["in_flight"] == 1  # the sender is stuck on the full socket, and only it
    encoded = client["sent"] + client["in_flight"] + client["superseded"] + client["pending"]
    assert encoded == stats["frames_encoded"]
    assert stats["superseded"] == client["superseded"]
    # offer() is a reference swap: far cheaper than the encode it defers (medians resist GC hiccups).
    assert statistics.median(offer_times) * 10 < statistics.median(executor.durations)


@pytest.mark.asyncio
async def test_slow_client_does_not_delay_another(viewer: tuple[ViewerHub, CountingExecutor, str]) -> None:
    hub, _, url = viewer
    async with (
        aiohttp.ClientSession() as session,
        session.ws_connect(f"{url}/ws") as slow,
        session.ws_connect(f"{url}/ws") as fast,
    ):
        await receive_hello(slow)  # and never again
        await receive_hello(fast)
        last_seen = -1
        for seq in range(40):
            hub.offer("cam0", *noisy_frame(seq), {"seq": seq})
            header, _ = await receive_frame(fast)  # each frame arrives before the next offer
            assert header["seq"] == seq
            last_seen = header["seq"]
        slow_stats, fast_stats = client_stats(hub, 0), client_stats(hub, 1)
        assert slow.closed is False
    assert last_seen == 39
    assert fast_stats["sent"] == 40 and fast_stats["superseded"] == 0
    assert slow_stats["sent"] < 40 and slow_stats["superseded"] > 0


@pytest.mark.asyncio
async def test_no_encoding_without_clients(viewer: tuple[ViewerHub, CountingExecutor, str]) -> None:
    hub, executor, url = viewer
    for seq in range(20):
        hub.offer("cam0", *black_vehicle_frame(), {"seq": seq})
        await asyncio.sleep(0.005)
    assert hub.stats["frames_encoded"] == 0 and executor.submitted == 0
    async with aiohttp.ClientSession() as session, session.ws_connect(f"{url}/ws") as ws:
        await receive_hello(ws)
        header, _ = await receive_frame(ws)
    assert header["seq"] == 19  # only the newest frame is ever encoded for a new viewer
    assert hub.stats["frames_encoded"] == 1


@pytest.mark.asyncio
async def test_close_is_idempotent_and_leaves_no_tasks(no_leaked_threads: None) -> None:
    hub = ViewerHub()
    server = ViewerServer(hub, "127.0.0.1", 0)
    port = await server.start()
    async with aiohttp.ClientSession() as session:
        stalled = await session.ws_connect(f"http://127.0.0.1:{port}/ws")
        reader = await session.ws_connect(f"http://127.0.0.1:{port}/ws")
        await receive_hello(reader)
        for seq in range(10):
            hub.offer("cam0", *noisy_frame(seq), {"seq": seq})
            await asyncio.sleep(0.01)
        await asyncio.gather(hub.close(), hub.close())
        await hub.close()
        assert not [t for t in asyncio.all_tasks() if t.get_name().startswith(TASK_PREFIX)]
        assert hub.stats["clients"] == 0
        hub.offer("cam0", *black_vehicle_frame(), {})  # after close: ignored, no error
        await server.close()
        await server.close()
        await stalled.close()
        await reader.close()
    with pytest.raises(RuntimeError):
        hub.start()


class _HangingSocket:
    """A viewer whose close handshake never completes (a stalled peer)."""

    closed = False

    async def close(self, *, code: int, drain: bool) -> bool:
        await asyncio.Event().wait()
        return True


class _Transport:
    aborted = False

    def abort(self) -> None:
        self.aborted = True


@pytest.mark.asyncio
@pytest.mark.parametrize("how", ["timed_out", "cancelled"])
async def test_disconnecting_a_stalled_viewer_aborts_its_socket_and_leaves_no_close_running(
        how: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The close frame is waited for up to CLOSE_TIMEOUT_S; after that, or when the disconnect
    itself is cancelled meanwhile, the socket is aborted and the close is not left running."""
    monkeypatch.setattr(clients_module, "CLOSE_TIMEOUT_S", 0.2)
    transport = _Transport()
    client = clients_module.Client(1, _HangingSocket(), transport)  # type: ignore[arg-type]
    task = asyncio.create_task(client.close_socket(1001))
    if how == "cancelled":
        await asyncio.sleep(0.05)
        task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    await asyncio.sleep(0)  # the cancelled close finishes on the next turn of the loop
    assert transport.aborted
    running = [t for t in asyncio.all_tasks() if "_HangingSocket.close" in getattr(t.get_coro(), "__qualname__", "")]
    assert not running, running


# ---------------------------------------------------------------- server


@pytest.mark.asyncio
async def test_port_in_use_raises_viewer_error_naming_it() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        hub = ViewerHub()
        with pytest.raises(ViewerError, match=f"127.0.0.1:{port}.*in use"):
            await ViewerServer(hub, "127.0.0.1", port).start()
        await hub.close()


@pytest.mark.parametrize(
    ("spec", "expected"),
    [("127.0.0.1:8080", ("127.0.0.1", 8080)), ("0.0.0.0:0", ("0.0.0.0", 0)),
     ("localhost:65535", ("localhost", 65535)), ("[::1]:9000", ("::1", 9000))],
)  # fmt: skip
def test_parse_bind_accepts(spec: str, expected: tuple[str, int]) -> None:
    assert parse_bind(spec) == expected


@pytest.mark.parametrize(
    ("spec", "message"),
    [("off", "HOST:PORT"), ("8080", "HOST:PORT"), (":8080", "HOST:PORT"), ("host:", "HOST:PORT"),
     ("host:http", "0..65535"), ("host:70000", "0..65535"), ("host:-1", "0..65535"),
     ("::1:80", "brackets"), ("[nope]:80", "IPv6")],
)  # fmt: skip
def test_parse_bind_rejects(spec: str, message: str) -> None:
    with pytest.raises(BindError, match=message):
        parse_bind(spec)
    with pytest.raises(ValueError):  # argparse type= friendly
        parse_bind(spec)


@pytest.mark.asyncio
async def test_http_endpoints(viewer: tuple[ViewerHub, CountingExecutor, str]) -> None:
    hub, _, url = viewer
    hub.offer("cam0", *black_vehicle_frame(), {})
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{url}/api/stats") as resp:
            assert resp.status == 200 and resp.content_type == "application/json"
            stats = await resp.json()
        async with session.get(f"{url}/healthz") as resp:
            assert resp.status == 200 and await resp.json() == {"ok": True, "clients": 0, "streams": 1}
        async with session.get(f"{url}/") as resp:
            assert resp.status == 200 and resp.content_type == "text/html"
            assert '<script type="module" src="/static/viewer.js">' in await resp.text()
            assert "default-src 'self'" in resp.headers["Content-Security-Policy"]
        # The page's scripts are ES modules: a browser runs one only when served as JavaScript.
        scripts = sorted(path.name for path in STATIC_DIR.glob("*.js"))
        assert "viewer.js" in scripts
        for name, kind in [*((name, "javascript") for name in scripts), ("viewer.css", "text/css")]:
            async with session.get(f"{url}/static/{name}") as resp:
                assert resp.status == 200 and kind in resp.content_type, name
    assert {"clients", "frames_offered", "frames_encoded", "frames_sent", "superseded"} <= stats.keys()
    assert stats["frames_offered"] == 1 and stats["streams"] == ["cam0"]


@pytest.mark.asyncio
async def test_cross_site_websocket_is_refused(viewer: tuple[ViewerHub, CountingExecutor, str]) -> None:
    _, _, url = viewer
    async with aiohttp.ClientSession() as session:
        with pytest.raises(aiohttp.WSServerHandshakeError) as info:
            await session.ws_connect(f"{url}/ws", origin="http://evil.example")
        assert info.value.status == 403
        async with session.ws_connect(f"{url}/ws", origin=url) as ws:  # same origin: fine
            await receive_hello(ws)


# ---------------------------------------------------------------- browser


def require_chromium() -> None:
    """Skip without Chromium on a dev box; in CI (CI=true) a missing browser is a failure."""
    if os.path.exists(CHROMIUM):
        return
    reason = f"{CHROMIUM} not found (apt-get install chromium)"
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason}; the browser test must run in CI")
    pytest.skip(reason)


async def wait_for_page(page: Any, predicate_js: str, timeout: float = 15.0) -> None:
    # Not page.wait_for_function: it compiles the predicate with eval inside the
    # page, which our Content-Security-Policy (rightly) forbids.
    deadline = time.monotonic() + timeout
    while not await page.evaluate(predicate_js):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {predicate_js}")
        await asyncio.sleep(0.05)


async def offer_forever(hub: ViewerHub) -> None:
    seq = 0
    while True:
        hub.offer("cam0", *black_vehicle_frame(), {"seq": seq, "latency_ms": 41.5, "fps": 20.0, "miou": 0.75})
        seq += 1
        await asyncio.sleep(0.05)


@contextlib.asynccontextmanager
async def chromium_page(profile_dir: Path) -> AsyncIterator[tuple[Any, list[str]]]:
    """A page in a real headless Chromium, plus the page errors and console errors it logs."""
    require_chromium()
    from playwright.async_api import async_playwright

    errors: list[str] = []
    async with async_playwright() as pw:
        context = await pw.chromium.launch_persistent_context(
            str(profile_dir), executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS
        )
        try:
            page = context.pages[0] if context.pages else await context.new_page()
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
            yield page, errors
        finally:
            await context.close()


async def wait_for_new_frames(page: Any, count: int = 3) -> None:
    """Wait until the panel has drawn ``count`` frames and its seq moved on."""
    await page.wait_for_selector(".panel[data-stream='cam0'] canvas")
    await wait_for_page(page, f"() => Number(document.querySelector('.panel').dataset.frames) >= {count}")
    first = int(await page.get_attribute(".panel", "data-seq") or -1)
    await wait_for_page(page, f"() => Number(document.querySelector('.panel').dataset.seq) > {first}")


@pytest.mark.asyncio
async def test_page_in_headless_chromium(
    viewer: tuple[ViewerHub, CountingExecutor, str], tmp_path: Path
) -> None:
    hub, _, url = viewer
    feeder = asyncio.create_task(offer_forever(hub))
    try:
        async with chromium_page(tmp_path / "profile") as (page, errors):
            await page.goto(url)
            await wait_for_new_frames(page)
            legend = await page.locator(".legend-item").all_inner_texts()
            pixel = await page.evaluate(CANVAS_CENTRE_PIXEL_JS)
            status = await page.get_attribute("#status", "data-state")
            metrics = await page.locator(".panel .metrics").inner_text()
    finally:
        feeder.cancel()
    assert [name.strip() for name in legend] == list(CLASS_NAMES)
    assert pixel[:2] == [W, H]
    assert_colour(pixel[2:5], VEHICLE_ON_BLACK_RGB)
    assert status == "live" and "41.5 ms" in metrics and "0.750" in metrics
    assert not errors, errors


# The grid as the page shows it: panels in order, which is focused, and the grid controls.
LAYOUT_JS = """() => ({
  order: [...document.querySelectorAll('#streams > .panel')].map((p) => p.dataset.stream),
  focus: [...document.querySelectorAll('.panel.focus')].map((p) => p.dataset.stream),
  buttons: [...document.querySelectorAll('.panel .focus-button')].map((b) => [b.textContent, b.ariaPressed]),
  hasFocus: document.getElementById('streams').classList.contains('has-focus'),
  gridButtonHidden: document.getElementById('grid-button').hidden,
})"""


@pytest.mark.asyncio
async def test_page_focuses_one_stream_and_marks_a_silent_one_stale(
    viewer: tuple[ViewerHub, CountingExecutor, str], tmp_path: Path
) -> None:
    hub, _, url = viewer
    streams = ["cam1", "cam0"]  # cam1 first: the page sorts them

    async def feed() -> None:
        seq = 0
        while True:
            for stream in streams:
                hub.offer(stream, *black_vehicle_frame(), {"seq": seq})
            seq += 1
            await asyncio.sleep(0.05)

    def panel(stream: str) -> str:
        return f".panel[data-stream='{stream}']"

    feeder = asyncio.create_task(feed())
    try:
        async with chromium_page(tmp_path / "profile") as (page, errors):
            await page.goto(url)
            await wait_for_page(page, "() => document.querySelectorAll('.panel[data-frames]').length === 2")
            grid = await page.evaluate(LAYOUT_JS)
            await page.click(f"{panel('cam1')} .focus-button")
            focused = await page.evaluate(LAYOUT_JS)
            streams.append("a-cam")  # a new stream while one is focused
            await page.wait_for_selector(panel("a-cam"))
            arrived = await page.evaluate(LAYOUT_JS)
            await page.click(f"{panel('cam1')} canvas")  # the focused picture: back to the grid
            by_canvas = await page.evaluate(LAYOUT_JS)
            await page.click(f"{panel('cam0')} canvas")
            await page.keyboard.press("Escape")
            by_escape = await page.evaluate(LAYOUT_JS)
            await page.click(f"{panel('a-cam')} .focus-button")
            await page.click("#grid-button")
            by_button = await page.evaluate(LAYOUT_JS)
            streams.remove("cam0")
            await wait_for_page(page, f"() => document.querySelector(\"{panel('cam0')}\").classList.contains('stale')")
            badges = {s: await page.text_content(f"{panel(s)} .badge") for s in ("a-cam", "cam0", "cam1")}
    finally:
        feeder.cancel()
    at_grid = {"focus": [], "hasFocus": False, "gridButtonHidden": True}
    assert grid == {"order": ["cam0", "cam1"], "buttons": [["focus", "false"]] * 2, **at_grid}
    assert focused == {"order": ["cam0", "cam1"], "focus": ["cam1"], "buttons": [["focus", "false"], ["grid", "true"]],
                       "hasFocus": True, "gridButtonHidden": False}
    assert arrived == {**focused, "order": ["a-cam", "cam0", "cam1"],
                       "buttons": [["focus", "false"], *focused["buttons"]]}
    for layout in (by_canvas, by_escape, by_button):
        assert layout == {"order": ["a-cam", "cam0", "cam1"], "buttons": [["focus", "false"]] * 3, **at_grid}
    assert badges == {"a-cam": "live", "cam0": "stale", "cam1": "live"}
    assert not errors, errors


@pytest.mark.asyncio
async def test_page_reconnects_after_server_restart(tmp_path: Path) -> None:
    hub = ViewerHub()
    server = ViewerServer(hub, "127.0.0.1", 0)
    port = await server.start()
    feeder = asyncio.create_task(offer_forever(hub))
    try:
        async with chromium_page(tmp_path / "profile") as (page, _):
            await page.goto(f"http://127.0.0.1:{port}/")
            await wait_for_new_frames(page)
            await server.close()
            await wait_for_page(page, "() => document.getElementById('status').dataset.state === 'offline'")
            server = ViewerServer(hub, "127.0.0.1", port)  # same port, same page, no reload
            await server.start()
            await wait_for_page(page, "() => document.getElementById('status').dataset.state === 'live'")
            await wait_for_new_frames(page)
            panels = await page.locator(".panel").count()
    finally:
        feeder.cancel()
        await server.close()
        await hub.close()
    assert panels == 1  # the reconnect reused the stream's panel


@pytest.mark.asyncio
async def test_page_shows_why_a_camera_is_down(tmp_path: Path) -> None:
    status = {"front": {"state": "stalled", "live": True, "reconnects": 2, "last_frame_age_ms": 4200.0,
                        "dropped": {"stale": 3, "superseded": 7}, "source": "rtsp://***@10.0.0.5/s"}}
    hub = ViewerHub()
    server = ViewerServer(hub, "127.0.0.1", 0, status=lambda: status)
    port = await server.start()
    try:
        async with chromium_page(tmp_path / "profile") as (page, errors):
            await page.goto(f"http://127.0.0.1:{port}/")
            await wait_for_page(page, "() => document.querySelector(\".panel[data-state='stalled']\") !== null")
            badge = await page.text_content(".panel[data-stream='front'] .badge")
            placeholder = await page.inner_text(".panel[data-stream='front'] .placeholder")
            metrics = await page.inner_text(".panel[data-stream='front'] .metrics")
            status["front"] = {**status["front"], "state": "live", "reconnects": 3}  # it came back
            await wait_for_page(page, "() => document.querySelector('.panel').dataset.state === 'live'")
            hidden = await page.evaluate("() => document.querySelector('.placeholder').hidden")
    finally:
        await server.close()
        await hub.close()
    assert badge == "stalled"
    assert "stalled" in placeholder and "4.2 s ago" in placeholder and "2 reconnects" in placeholder
    assert "10" in metrics  # 3 stale + 7 superseded frames dropped
    assert hidden
    assert not errors, errors


# ---------------------------------------------------------------- JPEG quality per client


def test_tiers_step_down_per_two_slow_sends_and_one_very_slow_send_goes_to_the_last() -> None:
    period, tiers = 1 / 15, 4
    stepping = clients_module.Client(1, None, None)  # type: ignore[arg-type]  # no socket needed
    assert stepping.next_tier(0.2, 0.0, period, False, tiers) is None  # one slow send: not yet
    assert stepping.next_tier(0.4, 0.2, period, False, tiers) == 1  # the second in a row: one tier down
    jumping = clients_module.Client(2, None, None)  # type: ignore[arg-type]
    late = clients_module.TIER_JUMP_S + 0.1  # one frame took this long: the link cannot wait a tier at a time
    assert jumping.next_tier(late, 0.0, period, False, tiers) == tiers - 1
    jumping.set_tier(tiers - 1, late)
    assert jumping.next_tier(2 * late, late, period, False, tiers) is None  # nowhere lower to go
    assert clients_module.picture_tiers((80, 40), 960, small_picture=True)[-1] == Picture(40, 480)
    assert clients_module.picture_tiers((80, 40), 960, small_picture=False) == (Picture(80, 960), Picture(40, 960))
    with pytest.raises(ValueError, match="best first"):
        clients_module.picture_tiers((40, 80), 960, small_picture=True)


async def test_a_slow_link_moves_down_a_quality_tier_and_back_up(monkeypatch: pytest.MonkeyPatch) -> None:
    from benchmarks.viewer_stall import RawViewerClient
    from models.datasets.synthetic_scene import SyntheticDrive

    monkeypatch.setattr(clients_module, "TIER_UP_AFTER_S", 1.5)
    drive = SyntheticDrive(1, 960, 480, 15.0)
    frames = [drive.render(i) for i in range(8)]  # ~70 KB at quality 80, ~29 KB at 40: 15 fps needs 1 MB/s
    hub = ViewerHub()
    server = ViewerServer(hub, "127.0.0.1", 0)
    port = await server.start()

    async def feed() -> None:
        seq = 0
        while True:
            hub.offer("cam", *frames[seq % len(frames)], {"seq": seq})
            seq += 1
            await asyncio.sleep(1 / 15)

    fast, slow = RawViewerClient(port), RawViewerClient(port, rate_bps=400_000)  # a 3.2 Mbit/s link
    tasks = [asyncio.create_task(coro) for coro in (feed(), fast.run(), slow.run())]
    try:
        await wait_until(lambda: any(q == 40 for *_, q, _ in slow.frames), timeout=30, what="quality 40")
        freed = len(slow.frames)
        slow.rate_bps = None  # the link recovers
        await wait_until(lambda: any(q == 80 for *_, q, _ in slow.frames[freed:]) and slow.frames[-1][2] == 80
                         and hub.stats["tier_up"] >= 2, timeout=30, what="quality 80 again")
        stats = hub.stats
    finally:
        fast.closed = slow.closed = True
        for task in tasks:
            task.cancel()
        await server.close()
        await hub.close()
    assert {q for *_, q, _ in fast.frames} == {80}  # the fast viewer never paid for the slow one
    assert stats["tier_down"] >= 2 and stats["tier_up"] >= 2
    assert {"80", "40"} <= set(stats["encode"]["jpeg"])  # tier 40 was encoded only while someone needed it
    assert stats["encode"]["jpeg"]["40"]["frames"] < stats["encode"]["jpeg"]["80"]["frames"]
    assert stats["encode"]["jpeg"]["40"]["bytes"] < stats["encode"]["jpeg"]["80"]["bytes"] / 1.5
