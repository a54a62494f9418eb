"""Sources: every input kind, and a clear error naming each kind of bad input."""

from __future__ import annotations

import asyncio
from pathlib import Path

import cv2
import numpy as np
import pytest

from models.classes import Category
from stream.clock import ManualClock
from stream.sources import EndOfStream, ReplayMode, SourceError, SourceOptions, open_source, split_source_name
from stream.sources.limits import FrameLimits, OversizePolicy
from tests.conftest import require_shared
from tests.source_helpers import drain


def write_png(path: Path, value: int, size=(32, 16)) -> None:
    image = np.full((size[1], size[0], 3), value, np.uint8)
    assert cv2.imwrite(str(path), image)


async def test_cityscapes_replay_joins_truth_as_categories(cityscapes_root):
    source = await open_source("cs", f"cityscapes:{cityscapes_root}:val")
    frames = await drain(source)
    assert len(frames) == 10
    assert [f.seq for f in frames] == list(range(10))
    first = frames[0]
    assert first.image.shape == (1024, 2048, 3) and first.image.dtype == np.uint8
    assert first.truth is not None and first.truth.shape == (1024, 2048)
    assert int(first.truth.max()) < len(Category)
    # Cityscapes frames always show road and the ego bonnet (void) at the bottom centre.
    assert (first.truth == Category.FLAT).mean() > 0.2
    assert first.truth[-1, 1024] == Category.VOID
    assert frames[0].name.endswith("_leftImg8bit.png")


async def test_cityscapes_city_filter_and_bad_split(cityscapes_root):
    frames = await drain(await open_source("cs", f"cityscapes:{cityscapes_root}:train:aachen"))
    assert len(frames) == 5
    with pytest.raises(SourceError, match="nosuchsplit"):
        await open_source("cs", f"cityscapes:{cityscapes_root}:nosuchsplit")


async def test_video_file_reads_every_frame_in_rgb():
    video = require_shared("videos/highway_vehicles.mp4")
    source = await open_source("v", str(video))
    frames = await drain(source)
    assert len(frames) == 38
    assert frames[0].image.shape == (720, 1280, 3)
    assert source.nominal_fps == pytest.approx(25, abs=0.5)
    assert not source.drops


async def test_max_frames_limits_a_source():
    video = require_shared("videos/highway_solid_white_right.mp4")
    frames = await drain(await open_source("v", str(video), SourceOptions(max_frames=5)))
    assert len(frames) == 5


async def test_realtime_pacing_follows_recorded_rate():
    video = require_shared("videos/highway_vehicles.mp4")
    source = await open_source("v", str(video), SourceOptions(realtime=True, max_frames=6))
    frames = await drain(source)
    span_s = (frames[-1].capture_ns - frames[0].capture_ns) / 1e9
    assert span_s == pytest.approx(5 / 25, abs=0.08)  # 6 frames at 25 fps span 5 intervals


async def test_rate_paces_at_the_chosen_rate_not_the_recorded_one():
    # Synthetic drive recorded at 15 fps, replayed at 4 fps on a manual clock: no sleeping.
    clock = ManualClock()
    options = SourceOptions(rate=4.0, max_frames=5, clock=clock)
    frames = await drain(await open_source("s", "synthetic:size=64x32,fps=15", options))
    assert [f.capture_ns for f in frames] == [i * 250_000_000 for i in range(5)]


async def test_rate_must_be_positive():
    with pytest.raises(SourceError, match="replay rate must be > 0"):
        await open_source("s", "synthetic:size=64x32", SourceOptions(rate=0.0))


async def test_image_folder_skips_and_counts_a_corrupt_image(tmp_path, caplog):
    write_png(tmp_path / "a.png", 10)
    (tmp_path / "b.png").write_bytes(b"this is not a png")
    write_png(tmp_path / "c.png", 30)
    source = await open_source("f", str(tmp_path))
    frames = await drain(source)
    assert [f.name for f in frames] == ["a.png", "c.png"]
    assert source.drops == {"decode_error": 1}
    assert "b.png" in caplog.text


async def test_glob_source(tmp_path):
    (tmp_path / "sub").mkdir()
    write_png(tmp_path / "sub" / "x.png", 1)
    write_png(tmp_path / "y.jpg", 2)
    frames = await drain(await open_source("g", str(tmp_path / "**" / "*.png")))
    assert [f.name for f in frames] == ["x.png"]


@pytest.mark.parametrize(
    ("spec", "needle"),
    [
        ("/no/such/video.mp4", "/no/such/video.mp4"),
        ("/no/such/folder/", "/no/such/folder"),
        ("ftp://camera/stream", "unknown scheme 'ftp'"),
        ("rtsp://:8554/cam", "expected rtsp://"),
        ("rtsp://user:secret@127.0.0.1:99999/cam", "malformed RTSP URL"),
        ("camera:front", "expected camera:N"),
        ("/dev/video0?size=wide", "bad camera option size"),
        ("camera:0?fourcc=TOOLONG", "bad camera option fourcc"),
        ("cityscapes:/no/such/root", "/no/such/root"),
        ("synthetic:seed=abc", "seed"),
    ],
)
async def test_bad_specs_name_the_input(spec, needle):
    with pytest.raises(SourceError) as info:
        await open_source("x", spec)
    assert needle in str(info.value)
    assert "secret" not in str(info.value)


async def test_unreadable_video_is_named(tmp_path):
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(b"\x00" * 4096)
    with pytest.raises(SourceError, match=r"broken\.mp4"):
        await open_source("x", str(bad))


async def test_empty_folder_is_an_error(tmp_path):
    with pytest.raises(SourceError, match="no images"):
        await open_source("x", str(tmp_path))


def test_named_sources():
    assert split_source_name("front=/data/a.mp4", "cam0") == ("front", "/data/a.mp4")
    assert split_source_name("synthetic:seed=3", "cam1") == ("cam1", "synthetic:seed=3")


async def test_close_is_idempotent_and_stops_the_thread(no_leaked_threads, cityscapes_mini):
    source = await open_source("m", f"cityscapes:{cityscapes_mini}")
    await source.recv()
    await source.close()
    await source.close()
    with pytest.raises(EndOfStream):
        await source.recv()
    await asyncio.sleep(0)


async def test_live_replay_skips_frames_whose_time_has_passed_and_counts_them_late():
    clock = ManualClock()
    options = SourceOptions(rate=10.0, max_frames=20, clock=clock, replay_mode=ReplayMode.LIVE)
    source = await open_source("s", "synthetic:size=64x32", options)
    assert source.live
    first = await source.recv()
    clock.advance(450_000_000)  # the consumer was busy for 4.5 frame periods
    second = await source.recv()
    await source.close()
    assert (first.seq, second.seq) == (0, 4), "frames 1-3 were due before now: skipped"
    assert source.drops == {"late": 3}
    assert second.capture_ns == 400_000_000, "stamped when the recording says it was due"


async def test_lossless_replay_never_skips_and_warns_once_when_behind(caplog):
    clock = ManualClock()
    source = await open_source("s", "synthetic:size=64x32", SourceOptions(rate=10.0, max_frames=5, clock=clock))
    await source.recv()
    clock.advance(2_000_000_000)
    frames = [await source.recv() for _ in range(4)]
    await source.close()
    assert [f.seq for f in frames] == [1, 2, 3, 4] and not source.drops
    assert [f.capture_ns for f in frames] == [i * 100_000_000 for i in range(1, 5)]
    assert source.max_lag_ms == pytest.approx(1900)
    assert sum("behind its recorded rate" in r.getMessage() for r in caplog.records) == 1


async def test_lost_frames_keep_their_sequence_numbers(tmp_path):
    for name in ("a.png", "c.png"):
        cv2.imwrite(str(tmp_path / name), np.zeros((16, 16, 3), np.uint8))
    (tmp_path / "b.png").write_bytes(b"corrupt")
    source = await open_source("f", str(tmp_path))
    frames = await drain(source)
    assert [f.seq for f in frames] == [0, 2] and source.frames_read == 3


async def test_oversized_frames_are_downscaled_or_rejected_at_the_source(tmp_path):
    cv2.imwrite(str(tmp_path / "big.png"), np.zeros((600, 1000, 3), np.uint8))
    small = await drain(await open_source("f", str(tmp_path), SourceOptions(limits=FrameLimits(500, 500))))
    assert small[0].image.shape == (300, 500, 3)
    rejecting = SourceOptions(limits=FrameLimits(500, 500, OversizePolicy.REJECT))
    source = await open_source("f", str(tmp_path), rejecting)
    assert await drain(source) == [] and source.drops == {"oversize": 1} and source.frames_read == 1


async def test_truncated_video_with_max_frames_counts_the_missing_frames(tmp_path, monkeypatch):
    from stream.sources.files import VideoFileSource

    video = require_shared("videos/highway_vehicles.mp4")
    monkeypatch.setattr(VideoFileSource, "_open", _open_claiming(VideoFileSource._open, 60))
    source = await open_source("v", str(video), SourceOptions(max_frames=50))
    frames = await drain(source)
    assert len(frames) == 38 and source.drops == {"video_truncated": 12} and source.frames_read == 50


def _open_claiming(original, frames: int):
    def open_(self):
        original(self)
        self._expected = frames  # the container says 60 frames; only 38 decode

    return open_
