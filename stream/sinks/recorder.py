"""``roadseg run --record DIR``: what a person can look at after a run, per stream.

``DIR/<stream>/`` receives

* ``overlay.mp4``: the annotated video (the viewer's overlay, at most ``RECORD_MAX_WIDTH`` wide,
  at the source's frame rate, or ``DEFAULT_VIDEO_FPS`` when it has none);
* the masks: ``masks/<seq>.png`` (palette PNG: category colours in any image viewer, the ids
  for a palette-aware reader), or ``masks-<first seq>.npz`` (compressed uint8 arrays ``masks``
  NxHxW and ``seqs``, ``NPZ_CHUNK`` frames per file), or none;
* ``telemetry.jsonl``: one line per recorded frame (seq, name, times, stage timings, latency,
  validity, IoU where ground truth exists).

``DIR/run.json`` says what was recorded and, at the end, how many frames each stream recorded
and dropped. Writing never slows the live path: results go to this sink's own bounded queue
(``RECORD_QUEUE_DEPTH``) and one writer thread; a result that finds the queue full is dropped
here (cause ``queue_full``), counted, and everything else goes on.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
import zlib
from collections import Counter
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from stream.sinks import Result, off_loop
from web_viewer.render import PNG_SIGNATURE, encode_mask_png, render_overlay

log = logging.getLogger(__name__)

RECORD_QUEUE_DEPTH = 16  # results waiting for the writer: about a second of frames at 15 fps
RECORD_MAX_WIDTH = 1280  # overlay video width cap: mp4v at 2048 wide costs a core on its own
OVERLAY_ALPHA = 0.5
DEFAULT_VIDEO_FPS = 10.0
NPZ_CHUNK = 100
VIDEO_NAME, TELEMETRY_NAME, RUN_NAME = "overlay.mp4", "telemetry.jsonl", "run.json"
DROP_CAUSE_QUEUE_FULL = "queue_full"
DROP_CAUSE_WRITE_ERROR = "write_error"
_CLOSE = None  # the writer thread's stop sentinel
MP4V = int.from_bytes(b"mp4v", "little")  # cv2.VideoWriter_fourcc(*"mp4v"): plays everywhere, no extra codec


class MaskFormat(StrEnum):
    PNG = "png"
    NPZ = "npz"
    OFF = "off"


class RecordError(ValueError):
    """``--record`` cannot be used as given; the message names the path and why."""


@dataclass(frozen=True)
class RecordConfig:
    directory: Path
    video: bool = True
    masks: MaskFormat = MaskFormat.PNG

    def __post_init__(self) -> None:
        object.__setattr__(self, "directory", Path(self.directory).expanduser())
        object.__setattr__(self, "masks", MaskFormat(self.masks))

    def check(self, stream_ids: list[str]) -> None:
        """Before the model loads: DIR is (or can be made) a writable folder and holds no earlier
        recording of these streams (a recording is never overwritten)."""
        root = self.directory
        if root.exists() and not root.is_dir():
            raise RecordError(f"--record {root}: exists and is not a folder")
        taken = [sid for sid in stream_ids if (root / sid).exists() and any((root / sid).iterdir())]
        if taken:
            raise RecordError(f"--record {root}: already holds a recording of stream(s) {taken}; "
                              "choose another folder (recordings are never overwritten)")
        try:
            root.mkdir(parents=True, exist_ok=True)
            probe = root / ".roadseg-write-test"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as exc:
            raise RecordError(f"--record {root}: cannot write there ({exc.strerror or exc})") from exc


@dataclass
class _Stream:
    folder: Path
    fps: float
    telemetry: Any = None  # the open JSON-lines file
    video: Any = None  # cv2.VideoWriter, opened at the first frame (its size)
    video_size: tuple[int, int] = (0, 0)
    chunk: list[tuple[int, np.ndarray]] = field(default_factory=list)
    recorded: int = 0


class RecorderSink:
    name = "recorder"

    def __init__(self, config: RecordConfig, stream_fps: Mapping[str, float | None], run_info: Mapping[str, Any]):
        self.config = config
        self._fps = {sid: fps or DEFAULT_VIDEO_FPS for sid, fps in stream_fps.items()}
        self._run_info = dict(run_info)
        self._queue: queue.Queue[Result | None] = queue.Queue(RECORD_QUEUE_DEPTH)
        self._drops: Counter[str] = Counter()
        self._streams: dict[str, _Stream] = {}
        self._aborted = False
        self._closed = False
        self._thread = threading.Thread(target=self._write_loop, name="recorder", daemon=True)
        self._write_run_file()
        self._thread.start()

    async def send(self, result: Result) -> None:
        try:
            self._queue.put_nowait(result)
        except queue.Full:
            self._drops[DROP_CAUSE_QUEUE_FULL] += 1

    def drops(self) -> Mapping[str, int]:
        return dict(self._drops)

    async def close(self, *, aborted: bool = False) -> None:
        if self._closed:
            return
        self._closed = True
        self._aborted = aborted  # the writer stops at its next result instead of draining the queue
        await off_loop("recorder-close", self._stop)

    def _stop(self) -> None:
        self._queue.put(_CLOSE)
        self._thread.join()

    # ---------------------------------------------------------------- writer thread

    def _write_loop(self) -> None:
        while (result := self._queue.get()) is not _CLOSE and not self._aborted:
            try:
                self._write(result)
            except Exception as exc:  # a full disk must not take the pipeline down: count and go on
                self._drops[DROP_CAUSE_WRITE_ERROR] += 1
                if self._drops[DROP_CAUSE_WRITE_ERROR] == 1:
                    log.error("recorder: cannot write %s seq %d: %s", result.frame.source_id, result.frame.seq, exc)
        for stream in self._streams.values():
            self._finish(stream)
        self._write_run_file(done=True)

    def _write(self, result: Result) -> None:
        frame, mask = result.frame, result.encoded.item.mask
        stream = self._stream(frame.source_id)
        if self.config.video:
            self._write_video(stream, frame.image, mask)
        if self.config.masks is MaskFormat.PNG:
            (stream.folder / "masks" / f"{frame.seq:06d}.png").write_bytes(encode_mask_png(mask))
        elif self.config.masks is MaskFormat.NPZ:
            if stream.chunk and stream.chunk[0][1].shape != mask.shape:  # a camera came back at another size
                self._flush_chunk(stream)
            stream.chunk.append((frame.seq, mask))
            if len(stream.chunk) >= NPZ_CHUNK:
                self._flush_chunk(stream)
        stream.telemetry.write(json.dumps(telemetry_line(result), separators=(",", ":")) + "\n")
        stream.recorded += 1

    def _stream(self, stream_id: str) -> _Stream:
        stream = self._streams.get(stream_id)
        if stream is None:
            folder = self.config.directory / stream_id
            (folder / "masks" if self.config.masks is MaskFormat.PNG else folder).mkdir(parents=True, exist_ok=True)
            stream = _Stream(folder, self._fps.get(stream_id) or DEFAULT_VIDEO_FPS)
            stream.telemetry = (folder / TELEMETRY_NAME).open("w", buffering=1)  # a line per frame, even on a crash
            self._streams[stream_id] = stream
        return stream

    def _write_video(self, stream: _Stream, image: np.ndarray, mask: np.ndarray) -> None:
        rgb = render_overlay(image, mask, alpha=OVERLAY_ALPHA, max_width=RECORD_MAX_WIDTH)
        size = (rgb.shape[1], rgb.shape[0])
        if stream.video is None:
            stream.video = cv2.VideoWriter(str(stream.folder / VIDEO_NAME), MP4V,
                                           stream.fps, size)
            if not stream.video.isOpened():
                raise OSError(f"OpenCV cannot write {stream.folder / VIDEO_NAME}")
            stream.video_size = size
        if size != stream.video_size:  # a camera that came back at another size: keep one video size
            rgb = cv2.resize(rgb, stream.video_size, interpolation=cv2.INTER_AREA)
        stream.video.write(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))

    def _flush_chunk(self, stream: _Stream) -> None:
        if not stream.chunk:
            return
        seqs = np.array([seq for seq, _ in stream.chunk], np.int64)
        masks = np.stack([m for _, m in stream.chunk])
        np.savez_compressed(stream.folder / f"masks-{int(seqs[0]):06d}.npz", masks=masks, seqs=seqs)
        stream.chunk.clear()

    def _finish(self, stream: _Stream) -> None:
        try:
            self._flush_chunk(stream)
        finally:
            if stream.video is not None:
                stream.video.release()
            stream.telemetry.close()

    def _write_run_file(self, *, done: bool = False) -> None:
        info = {**self._run_info, "video": self.config.video, "masks": self.config.masks.value}
        if done:
            info["finished_wall"] = time.time()
            info["streams"] = {sid: {"recorded": s.recorded} for sid, s in self._streams.items()}
            info["dropped"] = dict(self._drops)
        (self.config.directory / RUN_NAME).write_text(json.dumps(info, indent=2) + "\n")


def telemetry_line(result: Result) -> dict[str, Any]:
    """One recorded frame's telemetry (a JSON object)."""
    header = result.header
    line: dict[str, Any] = {
        "stream": header.stream_id,
        "seq": header.seq,
        "frame": header.frame_name,
        "capture_wall_ns": header.capture_wall_ns,
        "publish_wall_ns": header.publish_wall_ns,
        "latency_ms": round(header.latency_ms, 3),
        "timings_ms": {name: round(value, 3) for name, value in asdict(header.timings).items()},
        "batch_size": header.batch_size,
        "valid": header.valid,
        "invalid_reason": header.invalid_reason,
        "dropped_before": header.dropped_before,
        "state": header.stream_state,
    }
    if header.media_ns is not None:
        line["media_ns"] = header.media_ns
    if header.iou is not None:
        line["iou"] = {"mean": header.iou.mean, "per_class": list(header.iou.per_class)}
    return line



def read_mask_png(path: Path) -> np.ndarray:
    """The category ids of a mask PNG the recorder wrote (8-bit palette or greyscale, unfiltered
    rows), without an imaging library: OpenCV would expand the palette to colours."""
    data = Path(path).read_bytes()
    if not data.startswith(PNG_SIGNATURE):
        raise ValueError(f"{path}: not a PNG")
    pos, idat, size = len(PNG_SIGNATURE), bytearray(), (0, 0)
    while pos + 8 <= len(data):
        length, kind = int.from_bytes(data[pos:pos + 4], "big"), data[pos + 4:pos + 8]
        body = data[pos + 8:pos + 8 + length]
        if kind == b"IHDR":
            size = (int.from_bytes(body[4:8], "big"), int.from_bytes(body[0:4], "big"))  # (height, width)
            if body[8] != 8 or body[9] not in (0, 3) or body[12] != 0:
                raise ValueError(f"{path}: not an 8-bit, non-interlaced id PNG as the recorder writes")
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    rows = np.frombuffer(zlib.decompress(bytes(idat)), np.uint8).reshape(size[0], size[1] + 1)
    if rows[:, 0].any():
        raise ValueError(f"{path}: filtered rows (not written by the recorder)")
    return rows[:, 1:].copy()


def read_recording(folder: Path) -> list[tuple[int, np.ndarray]]:
    """(seq, mask) of every mask recorded in one stream's folder, PNG or npz, in seq order."""
    folder = Path(folder)
    masks = [(int(p.stem), read_mask_png(p)) for p in (folder / "masks").glob("*.png")]
    for chunk in folder.glob("masks-*.npz"):
        with np.load(chunk, allow_pickle=False) as npz:  # never unpickle: loading data runs no code
            masks += [(int(seq), np.asarray(mask)) for seq, mask in zip(npz["seqs"], npz["masks"], strict=True)]
    return sorted(masks, key=lambda item: item[0])
