"""`roadseg bridge echo`, the real command, against a real pipeline: one line per mask with its
seq, the gaps where frames were lost, and the end of stream with the final seq."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys

import cv2
import numpy as np

from models.backends.common import Precision
from stream.config import PipelineConfig
from tests.pipeline_helpers import running


def _free_address() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"tcp://127.0.0.1:{s.getsockname()[1]}"


async def test_echo_prints_seqs_gaps_and_the_end_of_stream(tmp_path):
    rng = np.random.default_rng(0)
    for i in range(6):
        path = tmp_path / f"f{i}.png"
        if i in (2, 5):
            path.write_bytes(b"broken")
        else:
            cv2.imwrite(str(path), rng.integers(0, 255, (64, 128, 3), np.uint8))
    address = _free_address()
    echo = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "stream.cli", "bridge", "echo", address, "--timeout", "120",
        stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    config = PipelineConfig(sources=(f"cam={tmp_path}",), model="demo", precision=Precision.FP32, zmq_address=address,
                            zmq_wait_subscriber_s=60.0, viewer=None, stats_interval_s=0)
    async with running(config) as (_pipeline, task):
        await task
    out, err = await asyncio.wait_for(echo.communicate(), 120)
    text = out.decode()
    assert echo.returncode == 0, (text, err.decode())
    lines = text.splitlines()
    masks = [line for line in lines if line.startswith("cam seq=")]
    assert [line.split()[1] for line in masks] == ["seq=0", "seq=1", "seq=3", "seq=4"]
    assert "cam gap: 1 frame(s) lost before seq=3" in text
    assert "cam end of stream final_seq=5 missed=2" in text
    assert lines[-1] == "masks=4 rejected=0"
