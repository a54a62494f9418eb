"""``roadseg fleet eval`` on a real Ray cluster on loopback (never a mock).

One cluster for the module: a head (no CPUs: it schedules nothing but decode tasks) and two worker
nodes of one CPU each, so the two model actors are two worker processes on two raylets. The runs
use the demo model at 256x128 and a few frames per drive: Ray and actor start-up dominate.

Same numbers: each actor runs torch on one thread, and so does the ``roadseg eval`` run it is
compared with. (oneDNN's convolutions round differently with another thread count, which moves a
pixel or two in millions at an argmax tie: identical matrices need the same thread count.)
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest

from models.evaluation.fleet.drives import entries_from_specs, list_drives
from models.evaluation.fleet.ray_job import FleetConfig, run_fleet
from models.evaluation.fleet.report import write_report
from tests.conftest import REPO, require_shared, shared_dir

pytestmark = pytest.mark.timeout(240)

SIZE = (256, 128)
CITY_FRAMES = 3
VIDEO_FRAMES = 4
VIDEOS = ("videos/highway_solid_white_right.mp4", "videos/highway_vehicles.mp4")
NODE_STORE = 100 * 2**20  # object store per node
KILL_RUN_VIDEO_FRAMES = 150  # enough work left after the first result arrives for the kill to land mid-run


def _ray():
    try:
        import ray
    except ImportError:
        if os.environ.get("CI") == "true":
            pytest.fail("ray is missing in CI: pip install -e '.[dev]' installs roadseg[fleet]")
        pytest.skip("ray is not installed (pip install 'roadseg[fleet]')")
    return ray


def _ray_processes() -> dict[int, str]:
    """Live (not zombie) Ray processes on this machine: pid -> command line. Ray's agents rename
    themselves (``ray::DashboardAgent``), so the command line alone cannot tie them to a session."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z" and ("ray::" in cmdline or "/site-packages/ray/" in cmdline):
            found[int(entry.name)] = cmdline[:160]
    return found


def _left_running(before: dict[int, str], timeout_s: float = 45.0) -> list[str]:
    """Ray processes started since ``before`` that are still alive after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        left = [cmd for pid, cmd in _ray_processes().items() if pid not in before]
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.3)


def test_cli_runs_on_an_embedded_ray_and_writes_masks(tmp_path):
    """No --ray: the command starts Ray on this machine, runs, and stops it (nothing left running).
    First in the module, before its cluster starts: any Ray process new after the run is a leak."""
    _ray()
    temp = tempfile.mkdtemp(prefix="rse-", dir="/tmp")
    running = _ray_processes()
    env = {**os.environ, "RAY_TMPDIR": temp, "ROADSEG_SHARED": str(shared_dir())}
    city = require_shared("cityscapes")
    try:
        result = subprocess.run(
            [sys.executable, "-m", "stream.cli", "fleet", "eval", "--drives", f"ffm=cityscapes:{city}:val:frankfurt",
             "--model", "demo", "--size", "256x128", "--limit", "2", "--actors", "1", "--num-cpus", "2",
             "--object-store-mb", "100", "--out", str(tmp_path / "out"), "--masks", str(tmp_path / "masks")],
            capture_output=True, text=True, timeout=200, cwd=REPO, env=env)
        left = _left_running(running)
    finally:
        shutil.rmtree(temp, ignore_errors=True)
    assert result.returncode == 0, result.stderr[-3000:]
    assert not left, f"Ray processes left running: {left}"
    assert "fleet: 2/2 frames (100%)" in result.stderr and "ETA" in result.stderr
    assert "category IoU (Cityscapes: 7 categories, void ignored)" in result.stdout
    body = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert body["cluster"]["address"] == "embedded" and body["frames"] == 2
    masks = sorted((tmp_path / "masks" / "ffm").glob("*.png"))
    assert [m.name for m in masks] == ["frankfurt_000000_000294.png", "frankfurt_000000_000576.png"]
    assert (tmp_path / "out" / "report.md").is_file()


@pytest.fixture(scope="module")
def cluster():
    _ray()
    from ray.cluster_utils import Cluster

    temp = tempfile.mkdtemp(prefix="rsf-", dir="/tmp")  # short: Ray's socket paths live under it
    running = _ray_processes()
    before = os.environ.get("RAY_TMPDIR")
    os.environ["RAY_TMPDIR"] = temp
    head = Cluster(initialize_head=True, shutdown_at_exit=True,
                   head_node_args={"num_cpus": 0, "object_store_memory": NODE_STORE, "include_dashboard": False})
    try:
        for _ in range(2):
            head.add_node(num_cpus=1, object_store_memory=NODE_STORE)
        head.wait_for_nodes()
        yield head
    finally:
        head.shutdown()
        if before is None:
            os.environ.pop("RAY_TMPDIR", None)
        else:
            os.environ["RAY_TMPDIR"] = before
        left = _left_running(running)
        shutil.rmtree(temp, ignore_errors=True)
        assert not left, f"Ray processes left running: {left}"


@pytest.fixture(scope="module")
def eval_confusion():
    """``roadseg eval``'s confusion matrix on the first CITY_FRAMES val frames, torch on one thread."""
    import torch

    from models.evaluation.evaluate import evaluate

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        result = evaluate("demo", require_shared("cityscapes"), split="val", size=SIZE, limit=CITY_FRAMES,
                          device="cpu", precision="fp32", progress=False, panels=0)
    finally:
        torch.set_num_threads(threads)
    return result.confusion


def _config(cluster, **extra) -> FleetConfig:
    return FleetConfig(model="demo", size=SIZE, device="cpu", precision="fp32", address=cluster.address, actors=2,
                       cpus_per_actor=1, **extra)


def _city() -> str:
    return f"cityscapes:{require_shared('cityscapes')}:val"


@pytest.fixture(scope="module")
def fleet_with_a_corrupt_video(cluster, tmp_path_factory):
    """Cityscapes val frames, the two dashcam videos, a truncated video and a missing folder: one run,
    driven from an actor on the cluster as for a ray:// client (the kill test drives from here)."""
    folder = tmp_path_factory.mktemp("fleet")
    corrupt = folder / "truncated.mp4"
    corrupt.write_bytes(require_shared(VIDEOS[1]).read_bytes()[:20000])  # no moov atom: cannot be opened
    specs = [_city(), *(str(require_shared(v)) for v in VIDEOS), str(corrupt), str(folder / "gone")]
    drives = list_drives(entries_from_specs(specs), limit=VIDEO_FRAMES)
    drives[0] = list_drives(entries_from_specs([_city()]), limit=CITY_FRAMES)[0]
    run = run_fleet(_config(cluster), drives, progress=False, driver_on_cluster=True)
    body = write_report(run, folder / "out")
    return body, folder / "out"


def test_cluster_has_a_head_and_two_worker_nodes(cluster, fleet_with_a_corrupt_video):
    body, _ = fleet_with_a_corrupt_video
    assert body["cluster"]["nodes"] == 3 and body["cluster"]["actors"] == 2
    assert body["cluster"]["resources"]["CPU"] == 2.0


def test_fleet_gives_eval_confusion_matrix_over_cityscapes_and_videos(fleet_with_a_corrupt_video, eval_confusion):
    body, out = fleet_with_a_corrupt_video
    drives = {d["name"]: d for d in body["drives"]}
    city = drives["cityscapes-val"]
    assert city["status"] == "ok" and city["frames"] == city["frames_scored"] == CITY_FRAMES
    assert np.array_equal(np.array(city["confusion"]), eval_confusion)
    # The overall matrix is the same: the videos have no ground truth, they count for speed only.
    assert np.array_equal(np.array(body["confusion"]), eval_confusion)
    metrics_json = json.loads((out / "metrics.json").read_text())
    assert metrics_json["confusion"] == eval_confusion.tolist() and metrics_json["frames"] == CITY_FRAMES
    assert metrics_json["category_iou"] is not None and set(metrics_json["per_class_iou"]) >= {"flat", "sky"}
    for video in VIDEOS:
        entry = drives[Path(video).stem]
        assert entry["status"] == "ok" and entry["frames"] == VIDEO_FRAMES and entry["frames_scored"] == 0
    assert body["frames_done"] == CITY_FRAMES + 2 * VIDEO_FRAMES and body["duplicates"] == 0
    lines = (out / "frames.jsonl").read_text().splitlines()
    assert len(lines) == body["frames_done"] and all(json.loads(line)["model_ms"] > 0 for line in lines)
    t = body["throughput"]
    assert t["frames"] == body["frames_done"] and t["frames_per_s"] > 0 and body["latency_ms"]["total_ms"]["p50"] > 0


def test_a_corrupt_video_is_reported_and_the_other_drives_finish(fleet_with_a_corrupt_video):
    body, out = fleet_with_a_corrupt_video
    failed = {d["name"]: d for d in body["failed_drives"]}
    assert set(failed) == {"truncated", "gone"}
    assert re.search("cannot open|no frame could be decoded", failed["truncated"]["errors"][0])
    assert "no such file" in failed["gone"]["errors"][0]
    assert [d["status"] for d in body["drives"]].count("ok") == 3
    report = (out / "report.md").read_text()
    assert "### Failed drives" in report and "truncated" in report
    for name in ("confusion.png", "drives.png", "throughput.png"):
        assert (out / name).stat().st_size > 1000
    panels = [w["panel"] for w in body["worst_frames"]]
    assert len(panels) == CITY_FRAMES and all(panel and (out / panel).is_file() for panel in panels)


def test_killing_a_worker_mid_run_still_counts_every_frame_once(cluster, eval_confusion, tmp_path):
    video = Path(VIDEOS[0]).stem
    drives = list_drives(entries_from_specs([_city()]), limit=CITY_FRAMES) + \
        list_drives(entries_from_specs([str(require_shared(VIDEOS[0]))]), limit=KILL_RUN_VIDEO_FRAMES)
    killed = {}

    def kill_the_first_actor_heard(row):
        if not killed:  # SIGKILL: no clean-up, as when a node's process dies
            os.kill(int(row["pid"]), signal.SIGKILL)
            killed.update(pid=int(row["pid"]), actor=str(row["actor"]), at=time.time())

    run = run_fleet(_config(cluster), drives, progress=False, on_row=kill_the_first_actor_heard)
    body = write_report(run, tmp_path)
    with pytest.raises(ProcessLookupError):
        os.kill(killed["pid"], 0)  # really gone
    frames = [json.loads(line) for line in (tmp_path / "frames.jsonl").read_text().splitlines()]
    keys = [(f["drive"], f["frame"]) for f in frames]
    assert len(keys) == len(set(keys)) == CITY_FRAMES + KILL_RUN_VIDEO_FRAMES
    assert sorted(k for k in keys if k[0] == video) == [(video, i) for i in range(KILL_RUN_VIDEO_FRAMES)]
    assert all(d["status"] == "ok" for d in body["drives"]), body["failed_drives"]
    assert np.array_equal(np.array(body["confusion"]), eval_confusion)
    # Mid-run: other workers (the second actor, the restarted one) went on after the kill.
    after = [f for f in frames if f["actor"] != killed["actor"] and f["done_at"] > killed["at"]]
    assert after, "every frame was done before the kill: the run was too short to test a loss"
