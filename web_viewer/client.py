"""``roadseg watch URL``: a client of the viewer's WebSocket, written on the ``websockets`` package
(not on the server's aiohttp), so it is also an independent check of the wire protocol.

    roadseg watch http://127.0.0.1:8080/                      # one telemetry line per frame
    roadseg watch 'http://host:8080/?token=T' --save out/     # out/<stream>/<seq>.jpg, <seq>_mask.png, telemetry.jsonl
    roadseg watch host:8080 --token T --video front.mp4 --stream front --count 300

``URL``: the page's URL as the viewer logs it (``http[s]://HOST:PORT/``, a ``?token=`` included),
the WebSocket itself (``ws[s]://HOST:PORT/ws``) or ``HOST:PORT``. The token is ``--token``, else the
URL's ``?token=``, else ``$ROADSEG_VIEWER_TOKEN``; it is sent as ``Authorization: Bearer`` (never
printed). Each frame message (protocol v2, :mod:`web_viewer.render`) carries the camera JPEG, the
category ids as a grey PNG and the frame's telemetry.

Outputs (any combination; telemetry lines when none is chosen):

* ``--telemetry``: one line per frame on stdout: stream, ``seq=N``, latency, stage timings, fps,
  state, validity, JPEG quality, mean IoU; ``--json``: the frame's whole JSON header instead;
* ``--save DIR``: ``DIR/<stream>/<seq>.jpg`` (the camera image as sent), ``<seq>_mask.png`` (palette
  PNG whose pixel values are the category ids, as ``roadseg segment`` writes) and
  ``telemetry.jsonl`` (one header per frame);
* ``--video FILE``: the annotated stream (overlay at ``--alpha``) as an mp4 of one stream
  (``--stream``, else the first stream heard), at ``--fps`` or the stream's measured rate.

It ends after ``--count`` frames, when the viewer closes (the run ended), or with exit 1 after
``--timeout`` seconds without a frame. Exit status: 0 done, 1 the viewer is unreachable, went
silent, refused a client (full) or closed before any frame, 2 a bad URL or argument, or a
refused token (401), 130 interrupted.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import sys
import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import cv2
import numpy as np

from web_viewer.render import PACKET_VERSION, FramePacket, encode_mask_png, render_overlay, unpack_frame

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT, EXIT_INTERRUPTED = 0, 1, 2, 130
TOKEN_ENV = "ROADSEG_VIEWER_TOKEN"  # the same variable roadseg run reads
HELP = "watch a running viewer: telemetry per frame, saved frames and masks, or an annotated video"
DESCRIPTION = ("Connect to a running viewer's WebSocket (roadseg run/demo) and print one telemetry line per frame, "
               "save each frame's JPEG, mask and telemetry, or write the annotated stream as a video.")
MAX_MESSAGE_BYTES = 64 * 1024 * 1024  # a 960-wide frame is well under 1 MB; the default 1 MiB is too tight
DEFAULT_TIMEOUT_S = 30.0
CONNECT_TIMEOUT_S = 10.0
DEFAULT_VIDEO_FPS = 15.0
MP4V = int.from_bytes(b"mp4v", "little")  # cv2.VideoWriter_fourcc(*"mp4v")
CLOSE_GOING_AWAY, CLOSE_TRY_AGAIN_LATER = 1001, 1013
_SAFE_NAME = re.compile(r"[^A-Za-z0-9._-]+")
STAGE_LABELS = (("queue", "queue"), ("preprocess", "pre"), ("inference", "infer"), ("postprocess", "post"))


class WatchError(Exception):
    """What went wrong, for the user, with the exit status it means."""

    def __init__(self, message: str, code: int = EXIT_FAILED) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True, slots=True)
class Target:
    ws_url: str  # without the token
    token: str | None


def parse_target(url: str, token: str | None = None) -> Target:
    """The WebSocket URL and token for ``url`` (see the module docstring); WatchError(2) if malformed."""
    text = url.strip()
    if "://" not in text:
        text = f"http://{text}"
    try:
        parts = urllib.parse.urlsplit(text)
        port = parts.port
    except ValueError as exc:
        raise WatchError(f"bad URL {url!r}: {exc}", EXIT_BAD_INPUT) from None
    scheme = {"http": "ws", "https": "wss", "ws": "ws", "wss": "wss"}.get(parts.scheme.lower())
    if scheme is None or not parts.hostname:
        raise WatchError(f"bad URL {url!r}: expected http://HOST:PORT/, ws://HOST:PORT/ws or HOST:PORT",
                         EXIT_BAD_INPUT)
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    netloc = host if port is None else f"{host}:{port}"
    path = parts.path.rstrip("/")
    if not path.endswith("/ws"):
        path += "/ws"  # the page's URL (or a reverse proxy's prefix): its WebSocket is beside it
    from_url = urllib.parse.parse_qs(parts.query).get("token", [None])[0]
    chosen = token or from_url or os.environ.get(TOKEN_ENV) or None
    return Target(f"{scheme}://{netloc}{path}", chosen)


def safe_name(stream_id: str) -> str:
    """A folder name for a stream id that came over the network (no separators, no dot-dot)."""
    name = _SAFE_NAME.sub("_", stream_id).strip("._") or "stream"
    return name[:100]


def telemetry_line(header: dict[str, Any]) -> str:
    """One human line per frame (``seq=N`` like ``roadseg bridge echo``)."""
    parts = [str(header.get("stream")), f"seq={header.get('seq')}"]
    if _num(header.get("latency_ms")):
        parts.append(f"latency={header['latency_ms']:.1f}ms")
    stages = header.get("stages_ms") or {}
    parts += [f"{label}={stages[key]:.1f}" for key, label in STAGE_LABELS if _num(stages.get(key))]
    if _num(header.get("fps")):
        parts.append(f"fps={header['fps']:.1f}")
    if "state" in header:
        parts.append(f"state={header['state']}")
    if "valid" in header:
        parts.append("valid=" + ("yes" if header["valid"] else f"no({header.get('invalid_reason') or '?'})"))
    if _num(header.get("miou")):
        parts.append(f"miou={header['miou']:.3f}")
    parts.append(f"q={header.get('quality')} size={header.get('width')}x{header.get('height')} "
                 f"jpeg={header.get('jpeg_bytes', 0) / 1024:.1f}KB mask={header.get('mask_bytes', 0) / 1024:.1f}KB")
    return " ".join(parts)


def _num(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def decode_images(packet: FramePacket) -> tuple[np.ndarray, np.ndarray]:
    """(RGB image, category ids) of one frame; ValueError if either does not decode or they differ in size."""
    bgr = cv2.imdecode(np.frombuffer(packet.jpeg, np.uint8), cv2.IMREAD_COLOR)
    ids = cv2.imdecode(np.frombuffer(packet.mask_png, np.uint8), cv2.IMREAD_UNCHANGED)
    if bgr is None or ids is None or ids.ndim != 2 or ids.shape != bgr.shape[:2]:
        raise ValueError(f"frame {packet.header.get('stream')}#{packet.header.get('seq')}: JPEG or mask PNG "
                         "does not decode, or their sizes differ")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), ids


class Watcher:
    """What to do with each frame (argument parsing and the socket apart, so tests drive it directly)."""

    def __init__(self, out: TextIO, *, telemetry: bool = True, json_lines: bool = False, save: Path | None = None,
                 video: Path | None = None, streams: Sequence[str] = (), alpha: float = 0.5,
                 fps: float | None = None) -> None:
        self.out = out
        self.telemetry = telemetry
        self.json_lines = json_lines
        self.save = save
        self.video = video
        self.streams = set(streams)
        self.alpha = alpha
        self.fps = fps
        self.frames = 0
        self.bad = 0
        self._video_stream: str | None = streams[0] if streams else None
        self._writer: Any = None
        self._video_size: tuple[int, int] | None = None
        self._logs: dict[str, TextIO] = {}

    def frame(self, packet: FramePacket) -> bool:
        """Handle one frame; False when it is of a stream not asked for."""
        header = packet.header
        stream_id = str(header.get("stream"))
        if self.streams and stream_id not in self.streams:
            return False
        self.frames += 1
        if self.json_lines:
            print(json.dumps(header, separators=(",", ":")), file=self.out, flush=True)
        elif self.telemetry:
            print(telemetry_line(header), file=self.out, flush=True)
        if self.save is None and self.video is None:
            return True
        rgb, ids = decode_images(packet)
        if self.save is not None:
            self._save(stream_id, header, packet.jpeg, ids)
        if self.video is not None:
            self._write_video(stream_id, header, rgb, ids)
        return True

    def _save(self, stream_id: str, header: dict[str, Any], jpeg: bytes, ids: np.ndarray) -> None:
        assert self.save is not None
        folder = self.save / safe_name(stream_id)
        seq = header.get("seq")
        stem = f"{seq:06d}" if isinstance(seq, int) else f"frame{self.frames:06d}"
        if stream_id not in self._logs:
            folder.mkdir(parents=True, exist_ok=True)
            self._logs[stream_id] = (folder / "telemetry.jsonl").open("a", encoding="utf-8")
        (folder / f"{stem}.jpg").write_bytes(jpeg)
        (folder / f"{stem}_mask.png").write_bytes(encode_mask_png(ids))
        log = self._logs[stream_id]
        log.write(json.dumps(header, separators=(",", ":")) + "\n")
        log.flush()

    def _write_video(self, stream_id: str, header: dict[str, Any], rgb: np.ndarray, ids: np.ndarray) -> None:
        assert self.video is not None
        if self._video_stream is None:
            self._video_stream = stream_id
            print(f"roadseg watch: recording stream {stream_id!r} to {self.video} (--stream picks another)",
                  file=sys.stderr)
        if stream_id != self._video_stream:
            return
        overlay = cv2.cvtColor(render_overlay(rgb, ids, alpha=self.alpha, max_width=rgb.shape[1]), cv2.COLOR_RGB2BGR)
        if self._writer is None:
            fps = self.fps or (header["fps"] if _num(header.get("fps")) and header["fps"] >= 1 else DEFAULT_VIDEO_FPS)
            height, width = overlay.shape[:2]
            self._video_size = (width - width % 2, height - height % 2)  # mp4 codecs want even sizes
            self.video.parent.mkdir(parents=True, exist_ok=True)
            self._writer = cv2.VideoWriter(str(self.video), MP4V, float(fps), self._video_size)
            if not self._writer.isOpened():
                raise WatchError(f"cannot write the video {self.video}", EXIT_BAD_INPUT)
        assert self._video_size is not None
        if (overlay.shape[1], overlay.shape[0]) != self._video_size:
            overlay = cv2.resize(overlay, self._video_size, interpolation=cv2.INTER_AREA)
        self._writer.write(overlay)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.release()
            self._writer = None
        for log in self._logs.values():
            log.close()
        self._logs.clear()


async def watch(target: Target, watcher: Watcher, *, count: int = 0, timeout_s: float = DEFAULT_TIMEOUT_S,
                connect_timeout_s: float = CONNECT_TIMEOUT_S) -> int:
    """Receive frames until ``count`` (0: no limit), the viewer closes, or ``timeout_s`` without one."""
    from websockets.asyncio.client import connect
    from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus, InvalidURI

    headers = {"Authorization": f"Bearer {target.token}"} if target.token else {}
    try:
        async with connect(target.ws_url, additional_headers=headers, max_size=MAX_MESSAGE_BYTES, compression=None,
                           proxy=None, open_timeout=connect_timeout_s, close_timeout=2,
                           user_agent_header="roadseg-watch") as ws:
            hello = await _receive(ws, timeout_s, target)
            streams = _check_hello(hello, target)
            print(f"roadseg watch: connected to {target.ws_url}; streams: {', '.join(streams) or 'none yet'}",
                  file=sys.stderr, flush=True)
            while not (count and watcher.frames >= count):
                message = await _receive(ws, timeout_s, target)
                if isinstance(message, str):
                    continue  # a later hello or notice: nothing to do
                try:
                    watcher.frame(unpack_frame(message))
                except ValueError as exc:  # one bad frame is skipped (and said once), not fatal
                    watcher.bad += 1
                    if watcher.bad == 1:
                        print(f"roadseg watch: skipping a malformed frame: {exc}", file=sys.stderr)
            return EXIT_OK
    except InvalidStatus as exc:
        raise _refused(exc.response.status_code, target) from None
    except InvalidURI as exc:
        raise WatchError(f"bad URL {target.ws_url}: {exc}", EXIT_BAD_INPUT) from None
    except ConnectionClosed as exc:
        code = exc.rcvd.code if exc.rcvd is not None else None
        if code == CLOSE_TRY_AGAIN_LATER:
            raise WatchError(f"the viewer at {target.ws_url} is full and refused this client (1013); "
                             "try again later") from None
        if watcher.frames and code in (1000, CLOSE_GOING_AWAY):
            print(f"roadseg watch: the viewer closed the connection ({code}) after {watcher.frames} frames",
                  file=sys.stderr)
            return EXIT_OK
        raise WatchError(f"the viewer at {target.ws_url} closed the connection ({code or 'no close frame'}) "
                         f"after {watcher.frames} frames") from None
    except InvalidHandshake as exc:
        raise WatchError(f"{target.ws_url} does not speak the viewer's WebSocket: {exc}") from None
    except TimeoutError:
        raise WatchError(f"cannot reach the viewer at {target.ws_url}: no answer within "
                         f"{connect_timeout_s:g} s") from None
    except OSError as exc:
        raise WatchError(f"cannot reach the viewer at {target.ws_url}: {exc.strerror or exc}") from None


async def _receive(ws: Any, timeout_s: float, target: Target) -> str | bytes:
    try:
        message: str | bytes = await asyncio.wait_for(ws.recv(), timeout_s)
    except TimeoutError:
        raise WatchError(f"no message from the viewer at {target.ws_url} for {timeout_s:g} s") from None
    return message


def _check_hello(message: str | bytes, target: Target) -> list[str]:
    try:
        hello = json.loads(message) if isinstance(message, str) else None
    except ValueError:
        hello = None
    if not isinstance(hello, dict) or hello.get("type") != "hello":
        raise WatchError(f"{target.ws_url} did not greet like a roadseg viewer (no hello message)")
    if hello.get("v") != PACKET_VERSION:
        raise WatchError(f"the viewer at {target.ws_url} speaks protocol {hello.get('v', 1)!r}; this client "
                         f"speaks {PACKET_VERSION} (upgrade the older side)")
    return [str(stream) for stream in hello.get("streams", [])]


def _refused(status: int, target: Target) -> WatchError:
    if status == 401:
        if target.token:
            return WatchError(f"the viewer at {target.ws_url} refused the token (401 Unauthorized): use the token "
                              "of the URL it logged (--token, the URL's ?token= or $" + TOKEN_ENV + ")",
                              EXIT_BAD_INPUT)
        return WatchError(f"the viewer at {target.ws_url} needs a token (401 Unauthorized): pass --token, the "
                          "URL it logged (with ?token=) or set $" + TOKEN_ENV, EXIT_BAD_INPUT)
    if status == 421:
        return WatchError("the viewer does not answer to this host name (421); use the address it serves on "
                          "or start it with --viewer-allow-host", EXIT_BAD_INPUT)
    if status == 403:
        return WatchError(f"the viewer at {target.ws_url} refused the connection (403 Forbidden)", EXIT_BAD_INPUT)
    if status == 404:
        return WatchError(f"no viewer WebSocket at {target.ws_url} (404 Not Found)", EXIT_BAD_INPUT)
    return WatchError(f"the viewer at {target.ws_url} refused the WebSocket (HTTP {status})")


# ---------------------------------------------------------------- command line


def add_subcommand(subparsers: Any) -> None:
    p = subparsers.add_parser("watch", help=HELP, description=DESCRIPTION)
    p.add_argument("url", metavar="URL", help="the viewer: http://HOST:PORT/ (the page URL it logs, ?token= "
                                              "included), ws://HOST:PORT/ws, or HOST:PORT")
    p.add_argument("--token", metavar="TOKEN",
                   help=f"the viewer's token (default: the URL's ?token=, else ${TOKEN_ENV})")
    p.add_argument("--telemetry", action="store_true",
                   help="print one line per frame (the default when neither --save nor --video is given)")
    p.add_argument("--json", dest="json_lines", action="store_true",
                   help="print each frame's whole JSON header instead of the telemetry line")
    p.add_argument("--save", type=Path, metavar="DIR",
                   help="write DIR/<stream>/<seq>.jpg, <seq>_mask.png (palette PNG of category ids), telemetry.jsonl")
    p.add_argument("--video", type=Path, metavar="FILE", help="write the annotated stream (overlay) as an mp4")
    p.add_argument("--stream", action="append", default=[], metavar="ID",
                   help="only this stream (repeatable; --video records the first one given)")
    p.add_argument("--count", type=int, default=0, metavar="N", help="exit after N frames (default 0: no limit)")
    p.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S, metavar="S",
                   help=f"exit 1 after S seconds without a message (default {DEFAULT_TIMEOUT_S:g})")
    p.add_argument("--alpha", type=float, default=0.5, metavar="A", help="--video overlay opacity, 0..1 (default 0.5)")
    p.add_argument("--fps", type=float, default=None, metavar="F",
                   help="--video frame rate (default: the stream's rate in its first frame, else 15)")
    p.add_argument("-v", "--verbose", action="store_true")
    p.set_defaults(handler=run_watch)


def run_watch(args: argparse.Namespace) -> int:
    try:
        if args.count < 0 or args.timeout <= 0 or not 0.0 <= args.alpha <= 1.0 or (args.fps is not None
                                                                                   and args.fps <= 0):
            raise WatchError("--count must be >= 0, --timeout and --fps > 0, --alpha in 0..1", EXIT_BAD_INPUT)
        target = parse_target(args.url, args.token)
        telemetry = args.telemetry or args.json_lines or (args.save is None and args.video is None)
        watcher = Watcher(sys.stdout, telemetry=telemetry, json_lines=args.json_lines, save=args.save,
                          video=args.video, streams=args.stream, alpha=args.alpha, fps=args.fps)
        try:
            return asyncio.run(watch(target, watcher, count=args.count, timeout_s=args.timeout))
        finally:
            watcher.close()
    except WatchError as exc:
        print(f"roadseg watch: error: {exc}", file=sys.stderr)
        return exc.code
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="roadseg")
    add_subcommand(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["watch", *(sys.argv[1:] if argv is None else argv)])
    return run_watch(args)


if __name__ == "__main__":
    sys.exit(main())
