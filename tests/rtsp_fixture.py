"""Run ``tests/rtsp_server.py`` (a live, time-stamped RTSP camera) as a child process of a test.

Usage::

    from tests.rtsp_fixture import RtspServer, require_rtsp_server

    def test_something():
        require_rtsp_server()  # skip (fail in CI) without the system GStreamer RTSP server
        with RtspServer(fps=25, size=(640, 360)) as server:
            cap = cv2.VideoCapture(server.url, cv2.CAP_FFMPEG)
            ...
            server.restart()  # SIGKILL, then a new server on the same port
            server.pause()    # SIGSTOP: the camera hangs without closing its sockets
            server.resume()   # SIGCONT

The server runs under the system Python (``/usr/bin/python3``, which has ``gi`` and GstRtspServer),
not the venv's. It is started in its own session, so signals sent to it (and a Ctrl-C in the
terminal running pytest) never reach the other.
"""

from __future__ import annotations

import contextlib
import functools
import os
import selectors
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import IO

import pytest

SYSTEM_PYTHON = "/usr/bin/python3"
SERVER_SCRIPT = Path(__file__).resolve().parent / "rtsp_server.py"
READY_TIMEOUT_S = 15.0  # GStreamer's first start scans its plugin registry: seconds on a cold cache
STOP_TIMEOUT_S = 5.0

# The same check as scripts/install-system-deps: the bindings, and x264enc (gstreamer1.0-plugins-ugly), without
# which the server starts but every client's DESCRIBE fails.
_CHECK = (
    "import gi; gi.require_version('Gst', '1.0'); gi.require_version('GstRtspServer', '1.0');"
    "from gi.repository import Gst; Gst.init(None); assert Gst.ElementFactory.find('x264enc'), 'no x264enc'"
)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@functools.cache
def _rtsp_server_problem() -> str | None:
    """Why the system Python cannot run the server, or None when it can (checked once per session)."""
    if not os.access(SYSTEM_PYTHON, os.X_OK):
        return f"{SYSTEM_PYTHON} not found"
    result = subprocess.run([SYSTEM_PYTHON, "-c", _CHECK], capture_output=True, text=True, timeout=60,
                            env=_child_env())
    if result.returncode != 0:
        detail = result.stderr.strip().splitlines()[-1:] or ["no output"]
        return f"{SYSTEM_PYTHON} cannot load GstRtspServer ({detail[0]}); run scripts/install-system-deps"
    return None


def require_rtsp_server() -> None:
    """Skip the calling test without the system RTSP server; in CI (``CI=true``) fail instead."""
    problem = _rtsp_server_problem()
    if problem is None:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"RTSP test server unavailable in CI: {problem}")
    pytest.skip(f"RTSP test server unavailable: {problem}")


def _child_env() -> dict[str, str]:
    """The environment without the venv's Python paths, which must not leak into the system Python."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP")}
    env["PYTHONUNBUFFERED"] = "1"
    return env


class RtspServer:
    """One ``tests/rtsp_server.py`` process; the port is kept across ``restart()``."""

    def __init__(self, port: int | None = None, fps: int = 25, size: tuple[int, int] = (640, 360),
                 mount: str = "/cam") -> None:
        self.port = port if port is not None else free_port()
        self.fps = fps
        self.size = size
        self.mount = mount
        self._proc: subprocess.Popen[bytes] | None = None
        self._stderr: IO[bytes] | None = None
        self._paused = False

    @property
    def url(self) -> str:
        return f"rtsp://127.0.0.1:{self.port}{self.mount}"

    @property
    def pid(self) -> int:
        if self._proc is None:
            raise RuntimeError("RTSP server not started")
        return self._proc.pid

    @property
    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> RtspServer:
        """Spawn the server and wait for its READY line; raise with its stderr if it does not come."""
        if self.alive:
            raise RuntimeError(f"RTSP server already running (pid {self.pid})")
        self._close_files()
        width, height = self.size
        cmd = [SYSTEM_PYTHON, str(SERVER_SCRIPT), "--port", str(self.port), "--mount", self.mount,
               "--fps", str(self.fps), "--size", f"{width}x{height}"]
        # stderr goes to a file, not a pipe: GStreamer warnings must never fill a pipe nobody reads.
        self._stderr = tempfile.TemporaryFile(prefix="rtsp-server-stderr-")  # noqa: SIM115 (lives with the process)
        self._proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=self._stderr,
                                      env=_child_env(), start_new_session=True)
        self._paused = False
        expected = f"READY {self.url}"
        line = self._read_line(READY_TIMEOUT_S)
        if line != expected:
            self.kill()
            why = "exited" if line is None and self._proc.returncode is not None else f"sent {line!r}"
            raise RuntimeError(f"RTSP server did not become ready on port {self.port} ({why}, "
                               f"waited for {expected!r}); stderr:\n{self.stderr()}")
        return self

    def _read_line(self, timeout: float) -> str | None:
        """The first stdout line, or None on EOF/timeout (without blocking past ``timeout``)."""
        assert self._proc is not None and self._proc.stdout is not None
        fd = self._proc.stdout.fileno()
        buffer = b""
        deadline = time.monotonic() + timeout
        with selectors.DefaultSelector() as selector:
            selector.register(fd, selectors.EVENT_READ)
            while b"\n" not in buffer:
                left = deadline - time.monotonic()
                if left <= 0 or not selector.select(left):
                    return None
                chunk = os.read(fd, 4096)
                if not chunk:
                    return None
                buffer += chunk
        return buffer.split(b"\n", 1)[0].decode(errors="replace").strip()

    def stderr(self) -> str:
        """Everything the current (or last) server process wrote to stderr."""
        if self._stderr is None:
            return ""
        self._stderr.flush()
        self._stderr.seek(0)
        return self._stderr.read().decode(errors="replace")

    def kill(self) -> None:
        """SIGKILL, as a crashed camera: no RTSP TEARDOWN, sockets reset by the kernel."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()  # works on a stopped process too
        if self._proc is not None:
            self._proc.wait()
        self._paused = False

    def restart(self) -> RtspServer:
        """Kill the server if it runs, and start a new one on the same port."""
        self.kill()
        return self.start()

    def pause(self) -> None:
        """SIGSTOP: the stream stalls but the TCP connections stay open, like a hung camera."""
        if self.alive:
            os.kill(self.pid, signal.SIGSTOP)
            self._paused = True

    def resume(self) -> None:
        if self.alive and self._paused:
            os.kill(self.pid, signal.SIGCONT)
        self._paused = False

    def stop(self) -> None:
        """SIGTERM (SIGKILL if it lingers) and reap; safe to call twice or on a paused server."""
        if self._proc is not None and self._proc.poll() is None:
            self.resume()  # a stopped process only dies of SIGKILL; let it handle SIGTERM
            self._proc.terminate()
            try:
                self._proc.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.kill()
        elif self._proc is not None:
            self._proc.wait()
        self._paused = False
        self._close_files()

    def _close_files(self) -> None:
        if self._proc is not None and self._proc.stdout is not None:
            self._proc.stdout.close()
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None

    def __enter__(self) -> RtspServer:
        if not self.alive:
            self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            if self.alive:
                self.kill()
