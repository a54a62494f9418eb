"""End to end, as a user would: `roadseg calibrate intrinsics` on rendered board images writes a camera
file (and its error plot), `roadseg calibrate ground` adds the ground plane, and `roadseg run --camera`
publishes bird's-eye grids and the camera file that a real ZeroMQ subscriber decodes."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import zmq

from calibration.camera import load_camera
from decision_bridge.bev import decode_bev
from decision_bridge.camera_info import decode_camera_info
from decision_bridge.liveness import decode_report
from decision_bridge.schema import decode
from tests.calibration_render import SIZE, TRUE_K, write_board_images

ROADSEG = [sys.executable, "-m", "stream.cli"]
FRAMES = 5


def _roadseg(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([*ROADSEG, *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "PYTHONUNBUFFERED": "1"})


def _free_address() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"tcp://127.0.0.1:{s.getsockname()[1]}"


def _calibrated(tmp_path: Path) -> Path:
    boards = tmp_path / "boards"
    write_board_images(boards)
    cv2.imwrite(str(boards / "blank.png"), np.full((SIZE[1], SIZE[0]), 128, np.uint8))
    camera = tmp_path / "front.json"
    done = _roadseg("calibrate", "intrinsics", "--images", str(boards), "--board", "9x6", "--square", "0.025",
                    "--out", str(camera))
    assert done.returncode == 0, done.stderr
    assert "rejected blank.png: no 9x6 checkerboard" in done.stdout
    assert (tmp_path / "front.errors.png").is_file() and cv2.imread(str(tmp_path / "front.errors.png")) is not None
    again = _roadseg("calibrate", "intrinsics", "--images", str(boards), "--board", "9x6", "--square", "0.025",
                     "--out", str(camera))
    assert again.returncode == 2 and "exists: pass --force" in again.stderr  # a camera file is never overwritten
    done = _roadseg("calibrate", "ground", str(camera), "--height", "1.3", "--pitch", "1.0")
    assert done.returncode == 0, done.stderr
    return camera


def test_calibrate_then_run_publishes_bev_grids(tmp_path):
    camera_file = _calibrated(tmp_path)
    camera = load_camera(camera_file)
    assert abs(camera.K[0, 0] / TRUE_K[0, 0] - 1) < 0.01 and camera.ground is not None
    address = _free_address()
    context = zmq.Context()
    sub = context.socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    for topic in (b"mask/", b"bev/", b"camera/", b"eos/"):
        sub.setsockopt(zmq.SUBSCRIBE, topic)
    sub.connect(address)
    run = subprocess.Popen(
        [*ROADSEG, "run", "--source", f"front=synthetic:seed=2,size={SIZE[0]}x{SIZE[1]},frames={FRAMES}",
         "--camera", f"front={camera_file}", "--bev-grid", "30x16@0.2", "--zmq", address, "--zmq-wait", "60",
         "--viewer", "off", "--device", "cpu"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    masks, bevs, cameras, kinds = [], [], [], []
    try:
        deadline = time.monotonic() + 180
        ended = False
        while not ended and time.monotonic() < deadline:
            if not sub.poll(200):
                assert run.poll() is None or sub.poll(0), run.stdout.read() if run.stdout else ""
                continue
            parts = sub.recv_multipart()
            kind = parts[0].split(b"/", 1)[0]
            kinds.append(kind)
            if kind == b"mask":
                masks.append(decode(parts))
            elif kind == b"bev":
                bevs.append(decode_bev(parts))
            elif kind == b"camera":
                cameras.append(decode_camera_info(parts))
            elif kind == b"eos":
                ended = decode_report(parts).stream_id == "front"
        assert run.wait(timeout=60) == 0
    finally:
        if run.poll() is None:
            run.kill()
        sub.close()
        context.term()
    assert [m.header.seq for m in masks] == list(range(FRAMES))
    assert [b.header.seq for b in bevs] == list(range(FRAMES))  # one grid per frame, after its mask
    assert {m.header.camera_hash for m in masks} == {camera.hash} == {b.header.camera_hash for b in bevs}
    assert cameras and cameras[0].header.camera_hash == camera.hash
    assert kinds.index(b"camera") < kinds.index(b"mask")  # the file comes before the first mask naming it
    assert json.loads(cameras[0].camera_json)["K"] == camera.to_json()["K"]
    grid = bevs[-1]
    assert (grid.header.cells_x, grid.header.cells_y) == (150, 80) and grid.classes.shape == (80, 150)
    assert 0.2 < grid.header.known_fraction < 0.95


def test_run_refuses_a_camera_file_that_does_not_fit(tmp_path):
    camera_file = tmp_path / "cam.json"
    obj = {"schema": "roadseg.camera", "version": 1, "image_size": [480, 360]}
    camera_file.write_text(json.dumps(obj))
    started = time.monotonic()
    done = _roadseg("run", "--source", "front=synthetic:size=256x128,frames=2", "--camera", f"front={camera_file}",
                    "--viewer", "off", "--zmq", "off")
    assert done.returncode == 2 and f"camera file {camera_file}: missing field K" in done.stderr
    assert time.monotonic() - started < 60  # before the model loads
    shown = _roadseg("calibrate", "show", str(camera_file))
    assert shown.returncode == 2 and "missing field K" in shown.stderr
