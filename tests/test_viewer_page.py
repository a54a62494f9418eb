"""The viewer page in a real headless Chromium (Debian's, driven by Playwright) against a real pipeline or a
real viewer server: the overlay is composed in the page (opacity, class toggles), the telemetry panel
is in step with the frame on screen, a stream that is down says why, four browsers at once; and a
stalled WebSocket client leaves the pipeline's frame rate alone (benchmarks/viewer_stall.py)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from models.backends.common import Precision
from models.classes import PALETTE, Category
from stream.config import PipelineConfig
from stream.pipeline import Pipeline
from stream.sources.live import LiveOptions
from tests.pipeline_helpers import running, wait_for
from tests.test_web_viewer import chromium_page, wait_for_page
from web_viewer import ViewerHub, ViewerServer

pytestmark = pytest.mark.timeout(240)

ROOT = Path(__file__).resolve().parent.parent
STALL_RATIO_BOUND = 0.8  # the benchmark's target is 0.95; this bound only catches a client that blocks the pipeline

# The stream's canvas: size, seq of the frame on screen, and a checksum of its pixels.
SNAPSHOT_JS = """(stream) => {
  const panel = document.querySelector(`.panel[data-stream='${stream}']`);
  const canvas = panel.querySelector('.view canvas');
  const px = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
  let sum = 0;
  for (let i = 0; i < px.length; i += 4) sum = (sum * 31 + px[i] + 7 * px[i + 1] + 13 * px[i + 2]) % 1000000007;
  return {seq: Number(panel.dataset.seq), frames: Number(panel.dataset.frames), width: canvas.width,
          height: canvas.height, sum};
}"""

# In ONE task (no new frame can be drawn in between): untick a class, tick it again, move the slider
# to 0, 100 and back; compare the canvas each time. PALETTE is passed in, flat is class 1.
CONTROLS_JS = """([stream, palette, flat]) => {
  const panel = document.querySelector(`.panel[data-stream='${stream}']`);
  const canvas = panel.querySelector('.view canvas');
  const read = () => canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
  const slider = document.getElementById('opacity');
  const setOpacity = (v) => { slider.value = String(v); slider.dispatchEvent(new Event('input')); };
  const toggle = document.getElementById(`class-${flat}`);
  const seqBefore = panel.dataset.seq;
  const start = Number(slider.value);
  const a = read();
  toggle.click();
  const noFlat = read();
  toggle.click();
  const again = read();
  setOpacity(0);
  const raw = read();
  setOpacity(100);
  const full = read();
  setOpacity(start);
  const differ = (x, y) => { let n = 0; for (let i = 0; i < x.length; i += 4)
    if (x[i] !== y[i] || x[i + 1] !== y[i + 1] || x[i + 2] !== y[i + 2]) n += 1; return n; };
  const is = (x, i, c) => x[i] === c[0] && x[i + 1] === c[1] && x[i + 2] === c[2];
  let inPalette = 0, flatPixels = 0;
  for (let i = 0; i < full.length; i += 4) {
    if (palette.some((c) => is(full, i, c))) inPalette += 1;
    if (is(full, i, palette[flat])) flatPixels += 1;
  }
  return {pixels: a.length / 4, seqBefore, seqAfter: panel.dataset.seq, changedByToggle: differ(a, noFlat),
          restored: differ(a, again) === 0, changedByOpacity0: differ(a, raw), inPaletteAtFull: inPalette,
          flatPixels, opacity: Number(slider.value)};
}"""

# What the telemetry panel shows right now, with the frame's pixel in the same task.
PANEL_JS = """(stream) => {
  const panel = document.querySelector(`.panel[data-stream='${stream}']`);
  const canvas = panel.querySelector('.view canvas');
  const text = (sel) => panel.querySelector(sel).textContent;
  const centre = canvas.getContext('2d').getImageData(canvas.width >> 1, canvas.height >> 1, 1, 1).data;
  return {seq: text('.metric-seq dd'), dataSeq: panel.dataset.seq, latency: text('.metric-latency dd'),
          fps: text('.metric-fps dd'), queue: text(".stage[data-stage='queue'] .stage-ms"),
          inferencePct: text(".stage[data-stage='inference'] .stage-pct"), drops: text('.drops'),
          iouRows: panel.querySelectorAll('.iou-row').length, iouHidden: panel.querySelector('.iou').hidden,
          state: text('.metric-state dd'), pixel: Array.from(centre.slice(0, 3))};
}"""


def config(*sources: str, **overrides: Any) -> PipelineConfig:
    base: dict[str, Any] = dict(sources=sources or ("front=synthetic:seed=1,size=256x128,frames=4000",),
                                model="demo", precision=Precision.FP32, zmq_address=None,
                                viewer=("127.0.0.1", 0), stats_interval_s=0, auto_max_batch=True, replay_rate=10.0)
    return PipelineConfig(**{**base, **overrides})


@contextlib.asynccontextmanager
async def pipeline_page(cfg: PipelineConfig) -> AsyncIterator[tuple[Pipeline, str]]:
    async with running(cfg) as (pipeline, task):
        await wait_for(lambda: pipeline.viewer_port is not None or task.done(), timeout_s=60, what="viewer")
        if task.done():
            task.result()
        yield pipeline, f"http://127.0.0.1:{pipeline.viewer_port}/"


async def frames_drawn(page: Any, stream: str, count: int, timeout: float = 60.0) -> None:
    await wait_for_page(page, f"() => Number(document.querySelector(\".panel[data-stream='{stream}']\")"
                              f"?.dataset.frames || 0) >= {count}", timeout)


async def seq_after(page: Any, stream: str, seq: int, timeout: float = 30.0) -> None:
    await wait_for_page(page, f"() => Number(document.querySelector(\".panel[data-stream='{stream}']\")"
                              f".dataset.seq) > {seq}", timeout)


# ---------------------------------------------------------------- overlay and controls, real pipeline


async def test_overlay_appears_changes_over_time_and_follows_the_controls(tmp_path: Path) -> None:
    async with pipeline_page(config()) as (_, url), chromium_page(tmp_path / "profile") as (page, errors):
        await page.goto(url)
        await frames_drawn(page, "front", 3)
        first = await page.evaluate(SNAPSHOT_JS, "front")
        await seq_after(page, "front", first["seq"] + 2)
        later = await page.evaluate(SNAPSHOT_JS, "front")
        controls = await page.evaluate(CONTROLS_JS, ["front", PALETTE.tolist(), int(Category.FLAT)])
        # The same controls through real input events: untick vehicle, slider to 100 %.
        await page.click("#class-7")
        await page.fill("#opacity", "100")
        seq = (await page.evaluate(SNAPSHOT_JS, "front"))["seq"]
        await seq_after(page, "front", seq + 1)  # a new frame, drawn with the new settings
        colours = await page.evaluate("""([stream, palette]) => {
          const canvas = document.querySelector(`.panel[data-stream='${stream}'] .view canvas`);
          const px = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
          const counts = palette.map(() => 0);
          for (let i = 0; i < px.length; i += 4) {
            palette.forEach((c, k) => {
              if (px[i] === c[0] && px[i + 1] === c[1] && px[i + 2] === c[2]) counts[k] += 1;
            });
          }
          return counts;
        }""", ["front", PALETTE.tolist()])
        legend_off = await page.locator(".legend-item.off").all_inner_texts()
        opacity_label = await page.inner_text("#opacity-value")
    assert (first["width"], first["height"]) == (256, 128)
    assert later["seq"] > first["seq"] and later["sum"] != first["sum"]  # the picture moves on
    pixels = controls["pixels"]
    assert controls["seqBefore"] == controls["seqAfter"]  # all on one frame
    assert controls["opacity"] == 50  # the slider's initial value is the server's alpha, and was restored
    # At 100 % every pixel is exactly its class colour: the overlay covers the frame.
    assert controls["inPaletteAtFull"] == pixels
    # Unticking flat changes exactly the flat pixels (a blended pixel equals the raw one only by chance).
    assert 0.05 * pixels < controls["changedByToggle"] <= controls["flatPixels"]
    assert controls["changedByToggle"] >= 0.9 * controls["flatPixels"]
    assert controls["restored"]  # ticking it again draws the same pixels
    assert controls["changedByOpacity0"] > 0.5 * pixels  # without the overlay most pixels differ
    vehicle = int(Category.VEHICLE)
    assert colours[vehicle] == 0, colours  # unticked: no vehicle-coloured pixel at 100 %
    assert sum(colours) > 0.5 * pixels, colours  # the other classes still cover the frame
    assert [t.strip() for t in legend_off] == ["vehicle"] and opacity_label == "100 %"
    assert not errors, errors


async def test_telemetry_panel_updates_with_the_pipeline(tmp_path: Path) -> None:
    async with pipeline_page(config()) as (_, url), chromium_page(tmp_path / "profile") as (page, errors):
        await page.goto(url)
        await frames_drawn(page, "front", 3)
        await wait_for_page(page, "() => document.querySelector(\".stage[data-stage='inference'] .stage-pct\")"
                                  ".textContent !== ''", 15)  # /api/telemetry polled
        first = await page.evaluate(PANEL_JS, "front")
        await seq_after(page, "front", int(first["seq"]) + 3)
        later = await page.evaluate(PANEL_JS, "front")
    for shown in (first, later):
        assert shown["seq"] == shown["dataSeq"]  # the panel's seq is the frame's on screen
        assert shown["latency"].endswith(" ms") and shown["queue"].endswith(" ms")
        assert shown["state"] == "live" and float(shown["fps"]) > 0
        assert not shown["iouHidden"] and shown["iouRows"] >= 6  # synthetic frames have ground truth
        p50, p99 = (float(v) for v in shown["inferencePct"].split(" / "))
        assert 0 < p50 <= p99
    assert int(later["seq"]) > int(first["seq"])
    assert (later["latency"], later["queue"]) != (first["latency"], first["queue"])
    assert not errors, errors


# ---------------------------------------------------------------- telemetry in step, exactly


def grey_of(seq: int) -> int:
    return 20 + (seq % 10) * 22  # ten levels 22 apart: JPEG moves a flat grey by 1-2


async def offer_numbered(hub: ViewerHub) -> None:
    """Frames whose grey level says their seq, with telemetry derived from the seq too."""
    seq = 0
    mask = np.zeros((120, 160), np.uint8)
    iou = [0.5] * 8
    while True:
        image = np.full((120, 160, 3), grey_of(seq), np.uint8)
        hub.offer("cam", image, mask, {"seq": seq, "latency_ms": seq + 0.5, "fps": 25.0, "state": "live",
                                       "stages_ms": {"queue": (seq % 7) + 0.5, "preprocess": 1.0, "inference": 5.0,
                                                     "postprocess": 1.0}, "iou": iou, "miou": 0.5})
        seq += 1
        await asyncio.sleep(0.03)


async def test_telemetry_is_in_step_with_the_frame_on_screen(tmp_path: Path) -> None:
    status = {"cam": {"state": "live", "live": False, "reconnects": 0, "last_frame_age_ms": 10.0,
                      "dropped": {"stale": 3, "superseded": 0, "late": 2}}}
    percentiles = {"streams": {"cam": {"latency_ms": {"inference": {"p50": 12.0, "p99": 30.0}}}}}
    hub = ViewerHub()
    server = ViewerServer(hub, "127.0.0.1", 0, status=lambda: status, telemetry=lambda: percentiles)
    port = await server.start()
    feeder = asyncio.create_task(offer_numbered(hub))
    samples = []
    try:
        async with chromium_page(tmp_path / "profile") as (page, errors):
            await page.goto(f"http://127.0.0.1:{port}/")
            await frames_drawn(page, "cam", 3)
            await page.fill("#opacity", "0")  # the camera image alone: its grey level is its seq
            await wait_for_page(page, "() => document.querySelector('.drops').textContent !== ''", 15)
            await wait_for_page(page, "() => document.querySelector(\".stage[data-stage='inference'] .stage-pct\")"
                                      ".textContent !== ''", 15)
            for _ in range(40):
                samples.append(await page.evaluate(PANEL_JS, "cam"))
                await asyncio.sleep(0.04)
    finally:
        feeder.cancel()
        await server.close()
        await hub.close()
    seqs = [int(s["seq"]) for s in samples]
    assert len(set(seqs)) >= 10 and seqs == sorted(seqs), seqs  # the numbers update, never backwards
    for shown in samples:
        seq = int(shown["seq"])
        assert shown["dataSeq"] == shown["seq"]
        assert all(abs(v - grey_of(seq)) <= 6 for v in shown["pixel"]), (seq, shown["pixel"])  # pixels of THAT seq
        assert shown["latency"] == f"{seq + 0.5:.1f} ms" and shown["queue"] == f"{(seq % 7) + 0.5:.1f} ms"
    last = samples[-1]
    assert last["inferencePct"] == "12.0 / 30.0"  # /api/telemetry, per stage
    assert last["drops"] == "dropped by cause: stale 3 · late 2"  # /api/streams, by cause (zeros left out)
    assert last["iouRows"] == 8
    assert not errors, errors


# ---------------------------------------------------------------- a stream that is down


async def test_a_stream_that_is_down_shows_why(tmp_path: Path) -> None:
    cfg = config("front=synthetic:seed=1,size=256x128,frames=4000", "short=synthetic:seed=2,size=256x128,frames=3",
                 "dead=rtsp://127.0.0.1:9/cam", live=LiveOptions(stall_ms=300))
    async with pipeline_page(cfg) as (_, url), chromium_page(tmp_path / "profile") as (page, errors):
        await page.goto(url)
        await frames_drawn(page, "front", 2)
        for stream, state in (("dead", "connecting"), ("short", "ended")):
            await wait_for_page(page, f"() => document.querySelector(\".panel[data-stream='{stream}']\")"
                                      f"?.dataset.state === '{state}'", 60)
        texts = {stream: await page.inner_text(f".panel[data-stream='{stream}'] .placeholder")
                 for stream in ("dead", "short")}
        badges = {stream: await page.text_content(f".panel[data-stream='{stream}'] .badge")
                  for stream in ("dead", "short", "front")}
        front_hidden = await page.evaluate(
            "() => document.querySelector(\".panel[data-stream='front'] .placeholder\").hidden")
    assert texts["dead"].startswith("connecting: no frame from this camera yet"), texts
    assert texts["short"].startswith("ended: the recording ended after 3 frames"), texts
    assert badges == {"dead": "connecting", "short": "ended", "front": "live"}
    assert front_hidden
    assert not errors, errors


# ---------------------------------------------------------------- four browsers, a stalled client


async def test_four_browsers_at_once_all_receive_frames(tmp_path: Path) -> None:
    async with pipeline_page(config()) as (_, url), contextlib.AsyncExitStack() as stack:
        pages = []
        for index in range(4):  # four separate Chromium processes, each with its own profile
            page, errors = await stack.enter_async_context(chromium_page(tmp_path / f"profile{index}"))
            await page.goto(url)
            pages.append((page, errors))
        starts = []
        for page, _ in pages:
            await frames_drawn(page, "front", 3)
            starts.append((await page.evaluate(SNAPSHOT_JS, "front"))["seq"])
        for (page, _), seq in zip(pages, starts, strict=True):
            await seq_after(page, "front", seq + 3)
        import aiohttp

        async with aiohttp.ClientSession() as session, session.get(f"{url}api/stats") as resp:
            stats = await resp.json()
        ends = [(await page.evaluate(SNAPSHOT_JS, "front")) for page, _ in pages]
        all_errors = [error for _, errors in pages for error in errors]
    assert stats["clients"] == 4 and all(c["sent"] >= 6 for c in stats["per_client"]), stats
    assert all(end["seq"] > seq + 3 and end["width"] == 256 for end, seq in zip(ends, starts, strict=True))
    assert not all_errors, all_errors


def test_a_stalled_client_leaves_the_pipeline_frame_rate_alone(tmp_path: Path) -> None:
    """One run of the benchmark, short and paced (robust on a loaded two-core machine): the stalled
    client's socket is really blocked in each of its windows, and the frame rate holds within a generous
    bound. The 5 % figure itself is the benchmark's (python -m benchmarks.viewer_stall)."""
    out = tmp_path / "viewer.json"
    subprocess.run([sys.executable, "-m", "benchmarks.viewer_stall", "--parts", "stall", "--pairs", "3",
                    "--window-s", "2.5", "--size", "960x480", "--rate", "5", "--out", str(out)], cwd=ROOT,
                   check=True, timeout=200, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    stall = json.loads(out.read_text())["stall"]
    stalled = [w for w in stall["windows"] if w["stalled"]]
    assert len(stalled) == 3 and all(w["clients_blocked_in_send"] >= 1 for w in stalled), stall
    assert stall["fps_ratio"] >= STALL_RATIO_BOUND, stall
