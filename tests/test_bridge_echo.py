"""`roadseg bridge echo`, the real command, against a real pipeline: one line per mask with its
seq, the gaps where frames were lost, and the end of stream with the final seq."""

from __future__ import annotations

import asyncio
import io
import socket
import subprocess
import sys
import time

import cv2
import numpy as np

from decision_bridge import MaskPublisher, MaskSubscriber
from decision_bridge.cli import Echo
from models.backends.common import Precision
from stream.config import PipelineConfig
from tests.pipeline_helpers import running
from tests.test_decision_bridge import make_parts


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


def test_gap_lines_name_the_mask_after_the_gap_when_one_poll_returns_several():
    """A CI run caught this: seq 3 and 4 arrived in one poll and the gap was put before seq=4,
    because the subscriber's status had already counted both. Gaps now come from the masks."""
    publisher = MaskPublisher("tcp://127.0.0.1:*")
    publisher.bind()
    sub = MaskSubscriber(publisher.bound_address)
    sub.connect()
    try:
        assert asyncio.run(publisher.wait_for_subscriber(10.0))
        for seq in (0, 1, 3, 4, 7):
            assert publisher.send(make_parts(seq=seq, stream_id="cam", run_id="00000000000000aa"))
        assert publisher.send(make_parts(seq=0, stream_id="cam", run_id="00000000000000bb"))
        time.sleep(0.5)  # all six are queued before the first poll, so one poll returns them together
        out = io.StringIO()
        Echo(sub, out).run(count=6, timeout_s=10.0)
    finally:
        sub.close()
        publisher.close()
    gaps = [line.split(" (")[0] for line in out.getvalue().splitlines() if " gap: " in line]
    # the restart (new run_id, seq 0 again) is not a gap
    assert gaps == ["cam gap: 1 frame(s) lost before seq=3", "cam gap: 2 frame(s) lost before seq=7"]
