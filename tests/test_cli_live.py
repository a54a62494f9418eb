"""Lifecycle of the ``roadseg`` process: signals at any moment, exact accounting after
SIGTERM, and a demo that runs even when the default ZeroMQ port is taken."""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import sys
import threading
import time

import pytest
import zmq

from stream.config import DEFAULT_ZMQ_ADDRESS

ROADSEG = [sys.executable, "-m", "stream.cli"]


class Proc:
    """A roadseg process whose stderr is read on a thread, so the test can wait for a line."""

    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen([*ROADSEG, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line)

    def wait_for_line(self, needle: str, timeout_s: float = 120) -> None:
        deadline = time.monotonic() + timeout_s
        while not any(needle in line for line in self.lines):
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise AssertionError(f"never logged {needle!r}: {''.join(self.lines)[-2000:]}")
            time.sleep(0.02)

    def signal_and_time_exit(self, *signals: int, timeout_s: float = 60) -> float:
        start = time.monotonic()
        for sig in signals:
            self.proc.send_signal(sig)
            time.sleep(0.05)
        self.out, _ = self.proc.communicate(timeout=timeout_s)
        self._reader.join(5)
        return time.monotonic() - start

    @property
    def err(self) -> str:
        return "".join(self.lines)


def test_sigterm_exits_promptly_and_every_frame_read_is_published_or_counted(tmp_path):
    summary_path = tmp_path / "summary.json"
    proc = Proc("run", "--source", "a=synthetic:", "--source", "b=synthetic:seed=2", "--viewer", "off",
                "--zmq", "off", "--summary-json", str(summary_path))
    proc.wait_for_line("model demo")
    time.sleep(3)
    took = proc.signal_and_time_exit(signal.SIGTERM)
    assert proc.proc.returncode == 0, proc.err
    assert took < 5.0, f"exit took {took:.1f} s"
    summary = json.loads(summary_path.read_text())
    for sid in ("a", "b"):
        stream = summary["streams"][sid]
        assert stream["frames_in"] > 0 and stream["unaccounted"] == 0, stream
        assert stream["frames_in"] == stream["published"] + sum(stream["dropped"].values()), stream
    assert "stream a: ended" in proc.out and "reconnects 0" in proc.out


def test_sigint_during_start_up_exits_at_once_with_a_summary():
    proc = Proc("demo", "--viewer", "off", "--zmq", "tcp://127.0.0.1:0")
    proc.wait_for_line("masks: ")  # logged before the model loads
    took = proc.signal_and_time_exit(signal.SIGINT)
    assert proc.proc.returncode == 0, proc.err
    assert took < 2.0, f"exit took {took:.1f} s"
    assert "frames: 0" in proc.out and "Traceback" not in proc.err


def test_second_ctrl_c_forces_a_prompt_exit():
    # Large frames: after the first Ctrl-C, finishing the frames already read takes a while.
    proc = Proc("run", "--source", "synthetic:size=2048x1024", "--viewer", "off", "--zmq", "off")
    proc.wait_for_line("model demo")
    time.sleep(2)
    took = proc.signal_and_time_exit(signal.SIGINT, signal.SIGINT)
    assert took < 3.0 and "forced stop" in proc.err and "frames:" in proc.out, proc.err
    assert "Traceback" not in proc.err


@pytest.fixture
def default_zmq_port_taken():
    context = zmq.Context()
    squatter = context.socket(zmq.PUB)
    squatter.setsockopt(zmq.LINGER, 0)
    with contextlib.suppress(zmq.ZMQError):  # already taken by something else: just as good
        squatter.bind(DEFAULT_ZMQ_ADDRESS)
    yield
    squatter.close(0)
    context.term()


def test_demo_runs_when_the_default_port_is_taken_and_run_refuses(default_zmq_port_taken):
    demo = subprocess.run([*ROADSEG, "demo", "--frames", "3", "--fast", "--viewer", "off"],
                          capture_output=True, text=True, timeout=300)
    assert demo.returncode == 0, demo.stderr
    assert "in use; publishing on tcp://127.0.0.1:" in demo.stderr
    run = subprocess.run([*ROADSEG, "run", "--source", "synthetic:frames=1", "--viewer", "off"],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 2 and "in use" in run.stderr


def test_demo_on_a_loaded_machine_stays_on_time_within_its_budget(tmp_path):
    """Both cores busy with other work: the demo (live replay mode by default) skips what it
    cannot show instead of falling behind, and what it publishes is young."""
    hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(2)]
    summary_path = tmp_path / "summary.json"
    try:
        result = subprocess.run([*ROADSEG, "demo", "--frames", "150", "--viewer", "off", "--zmq", "off",
                                 "--summary-json", str(summary_path)], capture_output=True, text=True, timeout=300)
    finally:
        for hog in hogs:
            hog.kill()
            hog.wait()
    assert result.returncode == 0, result.stderr
    stream = json.loads(summary_path.read_text())["streams"]["demo"]
    print(stream)
    assert stream["lag_ms"] < 1000, "fell behind the recording"
    assert stream["published"] >= 15 and stream["latency_ms"]["p50"] < 500
    assert stream["frames_in"] == 150 and stream["unaccounted"] == 0
