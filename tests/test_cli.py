"""The ``roadseg`` command as a user runs it: a real process, real sockets."""

from __future__ import annotations

import argparse
import json
import re
import signal
import subprocess
import sys
import time

import pytest

from decision_bridge.subscriber import MaskSubscriber
from models.classes import CLASS_NAMES
from models.cli_args import positive_float, size_arg
from stream.cli import DEMO_SOURCE, PLUGIN_SUBCOMMANDS, build_parser, config_from_args
from stream.geometry import synthetic_camera

ROADSEG = [sys.executable, "-m", "stream.cli"]
QUIET = ["--viewer", "off", "--zmq", "tcp://127.0.0.1:0"]


def roadseg(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([*ROADSEG, *args], capture_output=True, text=True, timeout=timeout)


def test_demo_headless_reaches_iou_target(tmp_path):
    summary_path = tmp_path / "summary.json"
    result = roadseg("demo", "--frames", "300", "--fast", *QUIET, "--summary-json", str(summary_path))
    assert result.returncode == 0, result.stderr
    assert "mean IoU (8 classes, void included)" in result.stdout
    summary = json.loads(summary_path.read_text())
    assert summary["frames"] == 300 and summary["dropped_total"] == 0
    assert summary["iou"]["mean_iou"] >= 0.8


def test_demo_publishes_messages_that_decode_per_schema():
    proc = subprocess.Popen([*ROADSEG, "demo", "--frames", "40", "--fast", "--viewer", "off",
                             "--zmq", "tcp://127.0.0.1:0", "--zmq-wait", "30"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        address = _wait_for_address(proc)
        sub = MaskSubscriber(address)
        sub.connect()
        try:
            received = [sub.recv(timeout_s=30) for _ in range(40)]
        finally:
            sub.close()
        assert proc.wait(timeout=60) == 0
    finally:
        proc.kill()
    messages = [m for m in received if m is not None]
    assert len(messages) == 40
    assert [m.header.seq for m in messages] == list(range(40))
    first = messages[0]
    assert first.header.stream_id == "demo" and first.header.classes == CLASS_NAMES
    assert first.mask.shape == (256, 512) and first.header.iou is not None
    assert first.header.model_id.startswith("demo")
    # The demo runs with its drive's own camera: bird's-eye grids on bev/demo, the viewer shows them.
    assert first.header.camera_hash == synthetic_camera(DEMO_SOURCE).hash


def _wait_for_address(proc: subprocess.Popen, timeout_s: float = 60) -> str:
    deadline = time.monotonic() + timeout_s
    assert proc.stderr is not None
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if "masks: " in line:
            return line.split("masks: ")[1].split()[0]
        if not line and proc.poll() is not None:
            break
    raise AssertionError("roadseg never announced its ZeroMQ address")


def test_sigint_is_an_ordered_shutdown_with_summary():
    proc = subprocess.Popen([*ROADSEG, "demo", "--frames", "0", *QUIET],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for_address(proc)
        time.sleep(2)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    assert "frames:" in out and "Traceback" not in err


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["run", "--source", "/no/such/drive.mp4"], "/no/such/drive.mp4"),
        (["run", "--source", "gopher://cam"], "unknown scheme 'gopher'"),
        (["run", "--source", "synthetic:frames=1", "--model", "/no/such/m.safetensors"], "/no/such/m.safetensors"),
        (["run", "--source", "synthetic:frames=1", "--model", "nonexistent"], "unknown model 'nonexistent'"),
    ],
)
def test_bad_input_exits_2_naming_it(args, needle):
    result = roadseg(*args, *QUIET)
    assert result.returncode == 2
    assert needle in result.stderr and "Traceback" not in result.stderr


def test_bad_zmq_address_is_named():
    result = roadseg("run", "--source", "synthetic:frames=1", "--viewer", "off", "--zmq", "tcp://nonsense:xx")
    assert result.returncode == 2 and "tcp://nonsense:xx" in result.stderr


def test_bad_viewer_bind_is_rejected_by_the_parser():
    result = roadseg("run", "--source", "synthetic:frames=1", "--viewer", "localhost", "--zmq", "off")
    assert result.returncode == 2 and "localhost" in result.stderr


@pytest.mark.parametrize("text", ["512", "512x", "axb", "0x256", "512x-1"])
def test_size_argument_rejects_malformed_and_non_positive(text):
    with pytest.raises(argparse.ArgumentTypeError, match=re.escape(repr(text))):
        size_arg(text)
    assert size_arg("1024X512") == (1024, 512)


@pytest.mark.parametrize("text", ["fast", "0", "-3", "nan"])
def test_rate_argument_rejects_non_positive_and_non_numbers(text):
    with pytest.raises(argparse.ArgumentTypeError, match=re.escape(repr(text))):
        positive_float(text)
    assert positive_float("2.5") == 2.5


def test_rate_reaches_the_pipeline_config():
    args = build_parser().parse_args(["run", "--source", "synthetic:", "--rate", "12.5"])
    assert config_from_args(args).replay_rate == 12.5


def _subcommand_help(parser: argparse.ArgumentParser, name: str) -> str | None:
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return next(c.help for c in action._choices_actions if c.dest == name)


@pytest.mark.parametrize("name", sorted(PLUGIN_SUBCOMMANDS))
def test_placeholder_help_of_each_lazy_subcommand_matches_its_real_parser(name):
    placeholder = _subcommand_help(build_parser(["run"]), name)
    assert placeholder == PLUGIN_SUBCOMMANDS[name][1] == _subcommand_help(build_parser([name]), name)


def test_top_level_help_imports_neither_torch_nor_the_subcommand_modules():
    probe = (
        "import sys\nfrom stream.cli import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        "print(sorted(m for m in ('torch', 'models.training.train', 'models.evaluation.evaluate') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "usage: roadseg" in result.stdout and result.stdout.strip().endswith("[]")
