"""``roadseg fleet eval`` pieces that need no Ray: drives and manifests, the aggregation's
count-once rule, the resource plan, the CLI without Ray installed, and the offline-tool import rule."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from models.classes import NUM_CLASSES
from models.errors import DatasetError
from models.evaluation.fleet.aggregate import FleetAggregate, throughput_timeline
from models.evaluation.fleet.drives import IMAGES, VIDEO, Drive, Frame, entries_from_specs, list_drives, read_manifest
from models.evaluation.fleet.ray_job import FleetConfig, FleetError, plan
from models.evaluation.fleet.worker import RESULT_COLUMNS, RESULT_DEFAULTS
from tests.conftest import REPO, require_shared

VIDEO_FILE = "videos/highway_vehicles.mp4"


def test_specs_name_drives_and_list_frames_with_truth(cityscapes_root):
    video = require_shared(VIDEO_FILE)
    drives = list_drives(entries_from_specs([
        f"cityscapes:{cityscapes_root}:val", f"front={video}", str(video),
        str(cityscapes_root / "leftImg8bit" / "train" / "aachen"), str(cityscapes_root / "nowhere"),
    ]), limit=2)
    assert [d.name for d in drives] == ["cityscapes-val", "front", "highway_vehicles", "aachen", "nowhere"]
    city, front, _, aachen, missing = drives
    assert city.kind == IMAGES and city.expected == 2 and city.with_truth == 2
    assert city.frames[0].name == "frankfurt_000000_000294" and city.frames[0].truth.endswith("_gtFine_labelIds.png")
    assert front.kind == VIDEO and front.expected == 2 and front.limit == 2 and front.frames == ()
    assert aachen.with_truth == 0 and aachen.expected == 2  # an image folder without a truth folder
    assert missing.error and "no such file or folder" in missing.error  # a failed drive, not a failed run


def test_manifests_json_with_truth_and_text_relative_to_their_folder(tmp_path, cityscapes_root):
    folder = cityscapes_root / "leftImg8bit" / "val" / "frankfurt"
    truth = cityscapes_root / "gtFine" / "val" / "frankfurt"
    manifest = tmp_path / "fleet.json"
    manifest.write_text(json.dumps({"drives": [{"source": str(folder), "name": "ffm", "truth": str(truth)},
                                               "cityscapes:cs:val:frankfurt"]}))
    (tmp_path / "cs").symlink_to(cityscapes_root)
    entries = read_manifest(manifest)
    drives = list_drives(entries, limit=3)
    assert [d.name for d in drives] == ["ffm", "cityscapes-val-frankfurt"]
    assert drives[0].with_truth == 3 and drives[1].with_truth == 3  # truth matched by the frame's stem
    assert [f.name for f in drives[0].frames] == [f.name for f in drives[1].frames]
    text = tmp_path / "drives.txt"
    text.write_text("# two drives\ncam=cs/leftImg8bit/val/frankfurt  # a comment\n\ncityscapes:cs\n")
    assert [(e.name, e.spec) for e in read_manifest(text)] == [
        ("cam", f"{tmp_path}/cs/leftImg8bit/val/frankfurt"), (None, f"cityscapes:{tmp_path}/cs")]


@pytest.mark.parametrize(("spec", "needle"), [
    ("rtsp://camera/stream", "live camera"),
    ("synthetic:seed=1", "no recording"),
    ("cityscapes:", "expected cityscapes:ROOT"),
])
def test_specs_that_are_no_recording_are_bad_input(spec, needle):
    with pytest.raises(DatasetError, match=needle):
        list_drives(entries_from_specs([spec]))


def test_bad_manifests_are_named(tmp_path):
    for body, needle in (("{", "not JSON"), ('{"drives": []}', "not empty"), ('[{"source": 3}]', "drive 0")):
        path = tmp_path / "m.json"
        path.write_text(body)
        with pytest.raises(DatasetError, match=needle):
            read_manifest(path)
    video = require_shared(VIDEO_FILE)
    path = tmp_path / "v.json"
    path.write_text(json.dumps([{"source": str(video), "truth": str(tmp_path)}]))
    with pytest.raises(DatasetError, match="videos have no ground truth"):
        list_drives(read_manifest(path))


def _row(drive: int, frame: int, cm: np.ndarray | None, **extra) -> dict:
    row = dict(RESULT_DEFAULTS, drive=drive, frame=frame, name=f"f{frame}", error="", decode_ms=1.0, model_ms=2.0,
               score_ms=0.5, busy_ms=2.5, done_at=100.0 + frame, actor="node:1:a", pid=1)
    if cm is not None:
        row.update(scored=True, cm=cm.astype(np.int64).tobytes(), category_iou=0.5, mean_iou=0.5, pixel_accuracy=0.5)
    row.update(extra)
    assert set(row) == set(RESULT_COLUMNS)
    return row


def test_each_frame_counts_once_and_failed_drives_stay_out_of_the_overall():
    drives = [Drive("a", "a", IMAGES, frames=(Frame(0, "f0", "x"), Frame(1, "f1", "y")), expected=2),
              Drive("b", "b", VIDEO, video="v.mp4", expected=None),
              Drive("c", "c", IMAGES, error="no such folder", expected=0)]
    cm = np.arange(NUM_CLASSES * NUM_CLASSES).reshape(NUM_CLASSES, NUM_CLASSES)
    agg = FleetAggregate(drives, panels=2)
    assert agg.add(_row(0, 0, cm)) and agg.add(_row(0, 1, cm))
    assert not agg.add(_row(0, 1, cm))  # a retried batch delivered it again
    assert agg.add(_row(1, 0, None)) and agg.add(_row(1, -1, None, error="decoder died"))
    overall, _, _, scored = agg.overall()
    assert agg.duplicates == 1 and scored == 2 and np.array_equal(overall, 2 * cm)
    reports = {r["name"]: r for r in agg.drive_reports()}
    assert reports["a"]["status"] == "ok" and reports["a"]["confusion"] == (2 * cm).tolist()
    assert reports["b"]["status"] == "failed" and reports["b"]["errors"] == ["decoder died"]
    assert reports["c"]["status"] == "failed" and reports["c"]["frames"] == 0


def test_throughput_timeline_counts_every_frame():
    timeline = throughput_timeline([0.0, 0.5, 1.0, 9.9, 10.0], 0.0, bins=10)
    assert len(timeline) == 10 and sum(rate * 1.0 for _, rate in timeline) == pytest.approx(5)
    short = throughput_timeline([0.0, 0.2, 0.3], 0.0)  # one bin of at least a second
    assert short == [[1.0, 3.0]]


def test_plan_fits_actors_to_the_cluster():
    cpu = plan(FleetConfig(model="demo"), {"CPU": 2.0}, 1)
    assert (cpu.actors, cpu.gpus_per_actor, cpu.device, cpu.decode_cpus, cpu.threads) == (2, 0.0, "cpu", 0.0, 1)
    gpu = plan(FleetConfig(model="demo"), {"CPU": 16.0, "GPU": 4.0}, 2)
    assert (gpu.actors, gpu.gpus_per_actor, gpu.device, gpu.decode_cpus) == (4, 1.0, "auto", 0.5)
    one = plan(FleetConfig(model="demo", actors=1, cpus_per_actor=2), {"CPU": 2.0}, 1)
    assert (one.actors, one.threads) == (1, 2)
    with pytest.raises(FleetError, match="need 6 CPUs"):
        plan(FleetConfig(model="demo", actors=3, cpus_per_actor=2), {"CPU": 4.0}, 1)
    with pytest.raises(FleetError, match="GPUs"):
        plan(FleetConfig(model="demo", gpus_per_actor=1), {"CPU": 4.0}, 1)


WITHOUT_RAY = "import sys; sys.modules['ray'] = None; from stream.cli import main; sys.exit(main(sys.argv[1:]))"


def test_fleet_help_works_and_running_says_how_to_install_without_ray(cityscapes_root):
    helped = subprocess.run([sys.executable, "-c", WITHOUT_RAY, "fleet", "eval", "--help"], capture_output=True,
                            text=True, timeout=60)
    assert helped.returncode == 0 and "--drives" in helped.stdout and "--ray ADDRESS" in helped.stdout
    ran = subprocess.run([sys.executable, "-c", WITHOUT_RAY, "fleet", "eval", "--model", "demo", "--drives",
                          f"cityscapes:{cityscapes_root}"], capture_output=True, text=True, timeout=60)
    assert ran.returncode == 2 and "pip install 'roadseg[fleet]'" in ran.stderr


def test_no_offline_tool_imports_stream():
    """models/ (eval, fleet, train, export...) never imports the live pipeline's package."""
    offenders = []
    for path in sorted((REPO / "models").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) and node.level == 0 else []
            offenders += [f"{path.relative_to(REPO)}: {n}" for n in names if n == "stream" or n.startswith("stream.")]
    assert offenders == []


def test_fleet_modules_import_without_ray():
    probe = ("import sys; sys.modules['ray'] = None\n"
             "import models.evaluation.fleet.cli, models.evaluation.fleet.report, models.evaluation.fleet.worker\n"
             "print(sorted(m for m in ('torch', 'ray.data') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60,
                            cwd=Path(REPO))
    assert result.returncode == 0, result.stderr


def test_fleet_benchmark_ratios_and_confusion_checks():
    import argparse

    from benchmarks.fleet import summarize

    cm = [[1, 0], [0, 1]]

    def fleet(rate, actors, cpus):
        return {"kind": "fleet", "frames": 30, "frames_per_s": rate, "startup_s": 9.0, "latency_ms_p50": 900.0,
                "actor_frames_per_s_busy": [rate / actors] * actors, "drive_confusion": cm, "failed_drives": 0,
                "actors": actors, "cpus_per_actor": cpus}

    samples = {
        "eval 1 thread": [{"kind": "eval", "frames": 30, "frames_per_s": 1.0, "confusion": cm}],
        "eval 2 threads": [{"kind": "eval", "frames": 30, "frames_per_s": 1.5, "confusion": cm}],
        "fleet 1x1CPU": [fleet(0.95, 1, 1.0)],
        "fleet 2x1CPU": [fleet(1.7, 2, 1.0)],
        "fleet 1x2CPU": [fleet(1.4, 1, 2.0)],
    }
    args = argparse.Namespace(model="demo", size=(256, 128), backend="torch", precision="fp32", rounds=1)
    results = summarize(samples, args, 2, gpu=False)
    assert results["ratios"]["scaling_2_actors_over_1"] == pytest.approx(1.7 / 0.95, abs=1e-3)
    assert results["ratios"]["per_actor_1cpu_over_eval_1_thread"] == 0.95
    assert results["targets"][0]["met"]
    same = results["same_confusion"]
    assert same["fleet_1cpu_actors_vs_eval_1_thread"] and same["fleet_2cpu_actor_vs_eval_2_threads"]
    assert same["eval_1_thread_vs_eval_all_threads_pixels_apart"] == 0
    gpu = summarize({"fleet 1x1GPU": [fleet(100.0, 1, 1.0)], "fleet 4x1GPU": [fleet(380.0, 4, 1.0)],
                     "eval cuda": [{"kind": "eval", "frames": 30, "frames_per_s": 105.0, "confusion": cm}]},
                    args, 16, gpu=True)
    assert gpu["ratios"] == {"scaling_1_actors_over_1": 1.0, "scaling_4_actors_over_1": 3.8,
                             "per_actor_1gpu_over_eval": 0.952}
    assert gpu["targets"][0]["met"]
