"""POST /api/segment and the /segment page: a real aiohttp server on a loopback port, real models,
real Cityscapes frames, a real pipeline and a real headless Chromium."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import io
import json
import struct
import threading
import time
import zlib
from collections.abc import AsyncIterator, Sequence
from typing import Any

import aiohttp
import cv2
import numpy as np
import pytest
import pytest_asyncio
from PIL import Image

from models.backends.base import BatchOutput
from models.backends.registry import create_backend
from models.classes import CLASS_NAMES, PALETTE, label_ids_to_categories
from models.store.registry import load_model
from stream.batcher import BatchConfig
from stream.config import PipelineConfig
from stream.pipeline import Pipeline
from tests.conftest import require_shared
from tests.test_web_viewer import chromium_page, wait_for_page
from web_viewer import ViewerHub, ViewerServer
from web_viewer.render import PNG_SIGNATURE
from web_viewer.segment_api import MAX_ACTIVE, MAX_PENDING
from web_viewer.segmentation import MAX_IMAGE_PIXELS, MAX_IMAGE_SIDE, MAX_UPLOAD_BYTES, ModelNotReady, segment_one

pytestmark = pytest.mark.timeout(120)

MINI_IMAGE = "cityscapes-mini/leftImg8bit/val/frankfurt/frankfurt_000000_000294_leftImg8bit.png"
MINI_LABEL = "cityscapes-mini/gtFine/val/frankfurt/frankfurt_000000_000294_gtFine_labelIds.png"
MINI_TRAIN_LABEL = "cityscapes-mini/gtFine/val/frankfurt/frankfurt_000000_000294_gtFine_labelTrainIds.png"
FULL_IMAGE = "cityscapes/leftImg8bit/val/frankfurt/frankfurt_000000_000294_leftImg8bit.png"
FULL_LABEL = "cityscapes/gtFine/val/frankfurt/frankfurt_000000_000294_gtFine_labelIds.png"
MINI_W, MINI_H = 256, 128


class ThreadSegmenter:
    """What the pipeline gives the viewer: the backend run on its own single thread."""

    def __init__(self, backend: Any) -> None:
        self.backend = backend
        self.pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="test-infer")

    async def __call__(self, image: np.ndarray) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self.pool, segment_one, self.backend, image)


@pytest.fixture(scope="module")
def demo_backend() -> Any:
    model, card = load_model("demo")
    backend = create_backend("torch", model, card, device="cpu", precision="fp32")
    yield backend
    backend.close()


@contextlib.asynccontextmanager
async def serving(segmenter: Any) -> AsyncIterator[str]:
    hub = ViewerHub()
    server = ViewerServer(hub, "127.0.0.1", 0, segmenter=segmenter)
    port = await server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await server.close()
        await hub.close()


@pytest_asyncio.fixture
async def demo_url(demo_backend: Any) -> AsyncIterator[str]:
    segmenter = ThreadSegmenter(demo_backend)
    async with serving(segmenter) as url:
        yield url
    segmenter.pool.shutdown(wait=True)


def shared_bytes(relative: str) -> bytes:
    return require_shared(relative).read_bytes()


def form(image: bytes, name: str = "frame.png", label: bytes | None = None,
         label_name: str = "frame_gtFine_labelIds.png") -> aiohttp.FormData:
    data = aiohttp.FormData()
    data.add_field("image", image, filename=name, content_type="application/octet-stream")
    if label is not None:
        data.add_field("label", label, filename=label_name, content_type="image/png")
    return data


async def post(url: str, data: Any, *, query: str = "", headers: dict[str, str] | None = None,
               ) -> tuple[int, dict[str, str], bytes]:
    async with aiohttp.ClientSession() as session, session.post(f"{url}/api/segment{query}", data=data,
                                                                headers=headers) as resp:
        return resp.status, dict(resp.headers), await resp.read()


def error_of(status: int, body: bytes) -> str:
    payload = json.loads(body)
    assert payload["status"] == status
    message: str = payload["error"]
    return message


def png_header(width: int, height: int) -> bytes:
    """A PNG that is only a header claiming ``width`` x ``height``: a decompression bomb's first bytes."""
    ihdr = b"IHDR" + struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return PNG_SIGNATURE + struct.pack(">I", 13) + ihdr + struct.pack(">I", zlib.crc32(ihdr)) + b"\x00" * 64


def jpeg_header(width: int, height: int) -> bytes:
    app0 = b"\xff\xe0" + struct.pack(">H", 16) + b"JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00"
    sof0 = b"\xff\xc0" + struct.pack(">HBHHB", 17, 8, height, width, 3) + b"\x01\x22\x00\x02\x11\x01\x03\x11\x01"
    return b"\xff\xd8" + app0 + sof0 + b"\x00" * 64


def encode(image_rgb: np.ndarray, ext: str) -> bytes:
    ok, buf = cv2.imencode(ext, cv2.cvtColor(image_rgb, cv2.COLOR_RGB2BGR))
    assert ok
    return buf.tobytes()


# ---------------------------------------------------------------- formats


async def test_every_format_describes_the_same_mask(demo_url):
    image, label = shared_bytes(MINI_IMAGE), shared_bytes(MINI_LABEL)
    results = {}
    for fmt in ("json", "png", "palette", "raw", "overlay"):
        status, headers, body = await post(demo_url, form(image, "f_leftImg8bit.png", label), query=f"?format={fmt}")
        assert status == 200, body[:300]
        results[fmt] = (headers, body)
        assert headers["X-Roadseg-Model"].startswith("demo") and headers["X-Roadseg-Size"] == f"{MINI_W}x{MINI_H}"
        assert "inference;dur=" in headers["Server-Timing"] and "total;dur=" in headers["Server-Timing"]
        assert 0.0 <= float(headers["X-Roadseg-IoU"]) <= 1.0

    described = json.loads(results["json"][1])
    assert results["json"][0]["Content-Type"].startswith("application/json")
    assert described["width"] == MINI_W and described["height"] == MINI_H and described["valid"] is True
    assert described["model"].startswith("demo") and described["backend"] == "torch"
    assert list(described["fractions"]) == list(CLASS_NAMES)  # the demo model has no road layer
    assert sum(described["fractions"].values()) == pytest.approx(1.0, abs=1e-4)
    assert {"receive", "decode", "queue", "preprocess", "inference", "postprocess", "model", "total"} \
        <= described["timings_ms"].keys()
    iou = described["iou"]
    assert list(iou["per_class"]) == list(CLASS_NAMES) and iou["label_format"] == "labelIds"
    assert iou["mean"] == pytest.approx(float(results["json"][0]["X-Roadseg-IoU"]), abs=1e-6)
    assert 0.0 < iou["category_iou"] <= 1.0 and iou["scored_pixels"] + iou["ignored_pixels"] == MINI_W * MINI_H

    ids = cv2.imdecode(np.frombuffer(results["raw"][1], np.uint8), cv2.IMREAD_UNCHANGED)
    assert ids.shape == (MINI_H, MINI_W) and ids.dtype == np.uint8 and ids.max() < len(CLASS_NAMES)
    palette = Image.open(io.BytesIO(results["palette"][1]))
    assert palette.mode == "P" and palette.size == (MINI_W, MINI_H)
    assert np.array_equal(np.asarray(palette), ids)  # the palette PNG's pixels are the ids too
    assert palette.getpalette()[: 3 * len(PALETTE)] == PALETTE.ravel().tolist()
    assert results["png"][1] == results["palette"][1]
    assert results["palette"][0]["Content-Disposition"] == 'inline; filename="f_leftImg8bit_mask.png"'
    counts = np.bincount(ids.ravel(), minlength=len(CLASS_NAMES)) / ids.size
    assert counts.tolist() == pytest.approx(list(described["fractions"].values()), abs=1e-6)

    overlay = cv2.imdecode(np.frombuffer(results["overlay"][1], np.uint8), cv2.IMREAD_COLOR)
    assert results["overlay"][0]["Content-Type"] == "image/jpeg" and overlay.shape == (MINI_H, MINI_W, 3)

    # The IoU is eval's: one confusion matrix of the mask against the folded labelIds.
    truth = label_ids_to_categories(cv2.imread(str(require_shared(MINI_LABEL)), cv2.IMREAD_UNCHANGED))
    hits = [np.count_nonzero((truth == c) & (ids == c)) for c in range(len(CLASS_NAMES))]
    unions = [np.count_nonzero(((truth == c) | (ids == c)) & (truth != 255)) for c in range(len(CLASS_NAMES))]
    expected = [h / u for h, u in zip(hits, unions, strict=True) if u]
    assert iou["mean"] == pytest.approx(sum(expected) / len(expected), abs=1e-6)


async def test_accept_header_chooses_the_format_and_the_parameter_wins(demo_url):
    image = shared_bytes(MINI_IMAGE)
    cases = [(None, "application/json"), ("image/png", "image/png"), ("image/jpeg", "image/jpeg"),
             ("image/png;q=0.5, application/json", "application/json"), ("text/html, */*;q=0.8", "application/json"),
             ("image/*", "image/png")]  # fmt: skip
    for accept, expected in cases:
        headers = {"Accept": accept} if accept else {"Accept": ""}
        status, got, body = await post(demo_url, image, headers={**headers, "Content-Type": "image/png"})
        assert status == 200 and got["Content-Type"].startswith(expected), (accept, got["Content-Type"])
        assert "X-Roadseg-IoU" not in got  # no label, no IoU
    status, got, _ = await post(demo_url, form(image), query="?format=overlay", headers={"Accept": "image/png"})
    assert status == 200 and got["Content-Type"] == "image/jpeg"
    status, _, body = await post(demo_url, form(image), headers={"Accept": "text/html"})
    assert status == 406 and "application/json" in error_of(406, body)
    status, _, body = await post(demo_url, form(image), query="?format=gif")
    assert status == 400 and "unknown format 'gif'" in error_of(400, body)


async def test_raw_jpeg_body_and_any_image_size(demo_backend, demo_url):
    rgb = cv2.cvtColor(cv2.imread(str(require_shared(MINI_IMAGE))), cv2.COLOR_BGR2RGB)
    odd = cv2.resize(rgb, (333, 101), interpolation=cv2.INTER_AREA)  # neither the model's size nor its ratio
    status, headers, body = await post(demo_url, encode(odd, ".jpg"), query="?format=raw",
                                       headers={"Content-Type": "image/jpeg"})
    assert status == 200 and headers["X-Roadseg-Size"] == "333x101"
    ids = cv2.imdecode(np.frombuffer(body, np.uint8), cv2.IMREAD_UNCHANGED)
    assert ids.shape == (101, 333)
    decoded = cv2.cvtColor(cv2.imdecode(np.frombuffer(encode(odd, ".jpg"), np.uint8), cv2.IMREAD_COLOR),
                           cv2.COLOR_BGR2RGB)
    assert np.array_equal(ids, demo_backend.infer([decoded]).masks[0])  # the backend's own mask, unchanged
    tiny = np.full((1, 1, 3), 128, np.uint8)
    status, headers, _ = await post(demo_url, encode(tiny, ".png"), headers={"Content-Type": "image/png"})
    assert status == 200


async def test_train_id_labels_are_read_by_their_name(demo_url):
    image = shared_bytes(MINI_IMAGE)
    _, _, by_ids = await post(demo_url, form(image, label=shared_bytes(MINI_LABEL)))
    _, _, by_train = await post(demo_url, form(image, label=shared_bytes(MINI_TRAIN_LABEL),
                                              label_name="x_gtFine_labelTrainIds.png"))
    ids, train = json.loads(by_ids)["iou"], json.loads(by_train)["iou"]
    assert train["label_format"] == "trainIds"
    # trainIds fold void into "ignored", so the void-ignored (official) per-category IoU agrees.
    for name in CLASS_NAMES[1:]:
        a, b = ids["per_class_void_ignored"][name], train["per_class_void_ignored"][name]
        assert (a is None and b is None) or a == pytest.approx(b, abs=0.02), name


# ---------------------------------------------------------------- limits and bad input


async def test_oversized_upload_gets_413(demo_url):
    too_big = b"\x00" * (MAX_UPLOAD_BYTES + 1)
    status, _, body = await post(demo_url, too_big, headers={"Content-Type": "image/png"})
    assert status == 413 and str(MAX_UPLOAD_BYTES) in error_of(413, body)

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: counted while it arrives
        for _ in range(17):
            yield b"\x00" * 2**20

    status, _, body = await post(demo_url, chunks(), headers={"Content-Type": "image/png"})
    assert status == 413 and "more than" in error_of(413, body)
    status, _, body = await post(demo_url, form(too_big))
    assert status == 413


@pytest.mark.parametrize(("name", "data", "claimed"), [
    ("bomb.png", png_header(100_000, 100_000), "100000x100000"),
    ("bomb.jpg", jpeg_header(60_000, 60_000), "60000x60000"),
    ("panorama.png", png_header(MAX_IMAGE_SIDE + 1, 10), f"{MAX_IMAGE_SIDE + 1}x10"),
    ("just-over.png", png_header(MAX_IMAGE_PIXELS // 4000 + 1, 4000), f"{MAX_IMAGE_PIXELS // 4000 + 1}x4000"),
])  # fmt: skip
async def test_too_many_pixels_gets_413_before_decoding(demo_url, name, data, claimed):
    start = time.perf_counter()
    status, _, body = await post(demo_url, form(data, name))
    message = error_of(413, body)
    assert status == 413 and claimed in message and name in message and "megapixels" in message
    assert time.perf_counter() - start < 5.0


@pytest.mark.parametrize(("name", "data", "status", "words"), [
    ("notes.txt", b"hello, this is text, not an image", 415, "not a JPEG or PNG"),
    ("anim.gif", b"GIF89a" + b"\x00" * 100, 415, "a GIF"),
    ("empty.png", b"", 400, "empty"),
    ("half.png", None, 400, "truncated PNG"),
    ("half.jpg", None, 400, "truncated JPEG"),
    ("garbage.png", png_header(64, 64) + b"IEND\xaeB`\x82", 400, "does not decode"),
    ("header.jpg", b"\xff\xd8\xff\xe0\x00", 400, "truncated JPEG"),
])  # fmt: skip
async def test_non_images_and_truncated_images_are_named(demo_url, name, data, status, words):
    if data is None:
        whole = shared_bytes(MINI_IMAGE)
        if name.endswith(".jpg"):
            whole = encode(cv2.cvtColor(cv2.imread(str(require_shared(MINI_IMAGE))), cv2.COLOR_BGR2RGB), ".jpg")
        data = whole[: len(whole) // 2]
    got, _, body = await post(demo_url, form(data, name))
    message = error_of(status, body)
    assert got == status and words in message and name in message, message


async def test_bad_labels_and_forms_are_refused(demo_url):
    image = shared_bytes(MINI_IMAGE)
    rgb = cv2.cvtColor(cv2.imread(str(require_shared(MINI_IMAGE))), cv2.COLOR_BGR2RGB)
    cases = [
        (form(image, label=encode(rgb, ".jpg"), label_name="l.jpg"), 415, "must be a PNG"),
        (form(image, label=encode(rgb, ".png"), label_name="colour.png"), 400, "single-channel"),
        (form(image, label=shared_bytes(FULL_LABEL), label_name="big.png"), 400, "must match"),
    ]
    text_only = aiohttp.FormData(default_to_multipart=True)
    text_only.add_field("comment", "no image here")
    cases.append((text_only, 400, "unknown form field 'comment'"))
    no_image = aiohttp.FormData()
    no_image.add_field("label", shared_bytes(MINI_LABEL), filename="l.png")
    cases.append((no_image, 400, "no 'image' field"))
    for data, status, words in cases:
        got, _, body = await post(demo_url, data)
        assert got == status and words in error_of(status, body), (status, words)
    got, _, body = await post(demo_url, form(image, label=shared_bytes(MINI_LABEL)), query="?label_format=rgb")
    assert got == 400 and "unknown label format 'rgb'" in error_of(400, body)
    got, _, body = await post(demo_url, b"x=1", headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert got == 415 and "multipart/form-data" in error_of(415, body)


async def test_cross_site_upload_is_refused(demo_url):
    status, _, _ = await post(demo_url, form(shared_bytes(MINI_IMAGE)), headers={"Origin": "http://evil.example"})
    assert status == 403


# ---------------------------------------------------------------- availability


async def test_no_model_gets_503_with_the_reason():
    image = shared_bytes(MINI_IMAGE)
    async with serving(None) as url:
        status, headers, body = await post(url, form(image))
        assert status == 503 and "no model" in error_of(503, body) and headers["Retry-After"] == "1"

    async def loading(_image: np.ndarray) -> Any:
        raise ModelNotReady("the model is still loading")

    async with serving(loading) as url:
        status, _, body = await post(url, form(image))
        assert status == 503 and "still loading" in error_of(503, body)


async def test_a_model_failure_is_a_500_and_the_server_goes_on(demo_backend):
    calls = 0

    async def flaky(image: np.ndarray) -> Any:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise MemoryError("out of memory")
        return segment_one(demo_backend, image)

    async with serving(flaky) as url:
        status, _, body = await post(url, form(shared_bytes(MINI_IMAGE)))
        assert status == 500 and "MemoryError: out of memory" in error_of(500, body)
        status, _, _ = await post(url, form(shared_bytes(MINI_IMAGE)))
        assert status == 200


async def test_concurrent_uploads_are_bounded(demo_backend):
    release = asyncio.Event()
    running = 0
    most = 0

    async def slow(image: np.ndarray) -> Any:
        nonlocal running, most
        running += 1
        most = max(most, running)
        try:
            await release.wait()
            return segment_one(demo_backend, image)
        finally:
            running -= 1

    image = shared_bytes(MINI_IMAGE)
    async with serving(slow) as url:
        admitted = [asyncio.create_task(post(url, form(image))) for _ in range(MAX_PENDING)]
        deadline = time.monotonic() + 30
        while running < MAX_ACTIVE and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.3)  # the others are received and waiting for a slot by now
        status, headers, body = await post(url, form(image))
        assert status == 429 and headers["Retry-After"] == "1" and "too many" in error_of(429, body)
        release.set()
        statuses = [status for status, _, _ in await asyncio.gather(*admitted)]
    assert statuses == [200] * MAX_PENDING
    assert most == MAX_ACTIVE


# ---------------------------------------------------------------- the live pipeline


class RecordingBackend:
    """The real demo backend, noting the thread of every call."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self.name, self.model_id, self.device, self.precision = inner.name, inner.model_id, inner.device, "fp32"
        self.threads: list[str] = []
        self.sizes: list[tuple[int, ...]] = []

    def infer(self, images: Sequence[np.ndarray]) -> BatchOutput:
        self.threads.append(threading.current_thread().name)
        self.sizes.extend(image.shape for image in images)
        return self._inner.infer(images)

    def warmup(self, batch_sizes: Sequence[int] = (1,)) -> None:
        self._inner.warmup(batch_sizes)

    def close(self) -> None:
        self._inner.close()


async def test_pipeline_segments_uploads_on_its_inference_thread():
    loaded = threading.Event()
    made: list[RecordingBackend] = []

    def factory() -> RecordingBackend:
        assert loaded.wait(60), "the test never let the model load"
        model, card = load_model("demo")
        made.append(RecordingBackend(create_backend("torch", model, card, device="cpu", precision="fp32")))
        return made[0]

    config = PipelineConfig(sources=("synthetic:seed=3,size=320x160,fps=20,frames=2000",), model="demo",
                            realtime=True, zmq_address=None, viewer=("127.0.0.1", 0), stats_interval_s=0,
                            batch=BatchConfig(max_batch=1, max_wait_ms=2))
    pipeline = Pipeline(config, factory)
    task = asyncio.create_task(pipeline.run())
    try:
        deadline = time.monotonic() + 30
        while pipeline.viewer_port is None and not task.done() and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        url = f"http://127.0.0.1:{pipeline.viewer_port}"
        image = shared_bytes(MINI_IMAGE)
        status, headers, body = await post(url, form(image))
        assert status == 503 and "still loading" in error_of(503, body)
        loaded.set()
        while pipeline.telemetry.frames < 3 and time.monotonic() < deadline + 30:
            await asyncio.sleep(0.02)
        status, headers, body = await post(url, form(image), query="?format=raw")
        assert status == 200 and headers["X-Roadseg-Size"] == f"{MINI_W}x{MINI_H}"
        published_before = pipeline.telemetry.frames
        await asyncio.sleep(0.5)
        assert pipeline.telemetry.frames > published_before  # the live stream went on
        assert not task.done()
    finally:
        pipeline.stop()
        summary = await asyncio.wait_for(task, 60)
    backend = made[0]
    assert (MINI_H, MINI_W, 3) in backend.sizes  # the upload went through the pipeline's model...
    assert set(backend.threads) == {"infer"}  # ...on its inference thread, like every batch
    assert not summary["errors"]


# ---------------------------------------------------------------- a real model, a real frame


async def test_dabnet_on_a_cityscapes_frame_scores_a_plausible_iou(dabnet_checkpoint):
    model, card = load_model(str(dabnet_checkpoint))
    backend = create_backend("torch", model, card, device="cpu", precision="fp32")
    segmenter = ThreadSegmenter(backend)
    try:
        async with serving(segmenter) as url:
            start = time.perf_counter()
            status, headers, body = await post(url, form(shared_bytes(FULL_IMAGE), "f_leftImg8bit.png",
                                                         shared_bytes(FULL_LABEL)))
            elapsed = time.perf_counter() - start
    finally:
        segmenter.pool.shutdown(wait=True)
        backend.close()
    assert status == 200, body[:300]
    described = json.loads(body)
    assert described["width"] == 2048 and described["height"] == 1024 and described["model"] == card.model_id
    assert "road" in described["fractions"] and 0.2 < described["fractions"]["road"] <= described["fractions"]["flat"]
    iou = described["iou"]
    assert iou["mean"] > 0.5 and iou["category_iou"] > 0.8, iou
    assert float(headers["X-Roadseg-Category-IoU"]) == pytest.approx(iou["category_iou"], abs=1e-6)
    print(f"DABNet 2048x1024 PNG: {elapsed * 1000:.0f} ms, timings {described['timings_ms']}")


# ---------------------------------------------------------------- the page


async def test_upload_page_in_headless_chromium(demo_url, tmp_path):
    image, label = require_shared(FULL_IMAGE), require_shared(FULL_LABEL)
    async with chromium_page(tmp_path / "profile") as (page, errors):
        await page.goto(demo_url)
        await page.click("a.navlink")  # reachable from the live viewer
        await page.wait_for_selector("#upload")
        assert page.url.endswith("/segment")
        await page.set_input_files("#image", str(image))
        await page.set_input_files("#label", str(label))
        await page.click("#submit")
        await wait_for_page(page, "() => ['done', 'error'].includes(document.body.dataset.state)", timeout=60)
        message = await page.inner_text("#message")
        assert await page.evaluate("() => document.body.dataset.state") == "done", message
        sizes = await page.evaluate("""() => ['image', 'prediction', 'truth'].map((name) => {
            const img = document.querySelector(`#panel-${name} img`);
            return [img.naturalWidth, img.naturalHeight, document.getElementById(`panel-${name}`).hidden];
        })""")
        rows = await page.locator("#fractions tr").all_inner_texts()
        mean = await page.inner_text("#summary [data-metric='mean IoU']")
    assert sizes == [[2048, 1024, False]] * 3
    assert [row.split()[0] for row in rows] == list(CLASS_NAMES)
    assert all("%" in row for row in rows) and "%" in mean
    assert "2048x1024" in message
    assert not errors, errors


async def test_upload_page_says_what_went_wrong(demo_url, tmp_path):
    notes = tmp_path / "notes.png"
    notes.write_text("not really a PNG")
    async with chromium_page(tmp_path / "profile") as (page, _errors):
        await page.goto(f"{demo_url}/segment")
        await page.set_input_files("#image", str(notes))
        await page.click("#submit")
        await wait_for_page(page, "() => document.body.dataset.state === 'error'", timeout=30)
        message = await page.inner_text("#message")
    assert "notes.png" in message and "not a JPEG or PNG" in message
