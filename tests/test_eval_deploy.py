"""``roadseg eval`` scores what is deployed: any registered backend, progress without a
terminal, and the metrics recorded in the model card (issue 9)."""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
from safetensors import safe_open

from models.evaluation.evaluate import evaluate
from models.evaluation.progress import LineProgress
from models.evaluation.record import EVAL_METRICS_KEY, record_target
from models.store.checkpoint import load_checkpoint, read_card, update_card

ROADSEG = [sys.executable, "-m", "stream.cli"]
PARITY_POINTS = 0.2  # onnxruntime fp32 vs torch fp32, category IoU in percentage points
HALF_SIZE = (1024, 512)  # DABNet at half resolution: the parity check stays cheap on a CPU
PROGRESS_LINE = re.compile(r"^eval: (\d+)/(\d+) frames \(\d+%\), [\d.]+ images/s, ETA \S+$", re.M)


def _tensors(path: Path) -> dict:
    with safe_open(str(path), framework="pt") as handle:
        return {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118


def test_onnxruntime_scores_within_a_fraction_of_a_point_of_torch(dabnet_checkpoint, cityscapes_root, monkeypatch,
                                                                    tmp_path):
    pytest.importorskip("onnxruntime")
    monkeypatch.setenv("ROADSEG_CACHE", str(tmp_path / "cache"))  # the ONNX export goes here
    loaded = load_checkpoint(dabnet_checkpoint)
    scores = {}
    for backend in ("torch", "onnxruntime"):
        result = evaluate("dabnet", cityscapes_root, backend=backend, size=HALF_SIZE, device="cpu",
                          precision="fp32", loaded=loaded, progress=False, panels=0)
        assert result.backend == backend and result.frames == 10
        scores[backend] = result.category_iou
    assert abs(scores["onnxruntime"] - scores["torch"]) * 100 < PARITY_POINTS, scores
    assert scores["torch"] > 0.8  # real weights (85.4 at this size)


def test_unknown_backend_is_refused(cityscapes_mini):
    from models.backends.registry import BackendError

    with pytest.raises(BackendError, match="unknown backend 'nope'"):
        evaluate("demo", cityscapes_mini, backend="nope", progress=False)


def test_line_progress_without_a_terminal():
    now = [0.0]
    out = io.StringIO()
    progress = LineProgress(100, out, interval_s=10.0, clock=lambda: now[0])
    for _ in range(100):
        now[0] += 0.5  # 2 images/s: a line after the first frame, then every 10 s, then at the end
        progress.update(1)
    progress.close()
    lines = out.getvalue().splitlines()
    assert lines[0] == "eval: 1/100 frames (1%), 2.00 images/s, ETA 50s"
    assert lines[-1] == "eval: 100/100 frames (100%), 2.00 images/s, ETA 0s"
    done = [int(PROGRESS_LINE.match(line).group(1)) for line in lines]
    assert done == [1, 21, 41, 61, 81, 100]  # first, then every 10 s (20 frames), and the last


def test_eval_records_metrics_in_the_cached_card_and_prints_progress(tmp_path, dabnet_checkpoint, cityscapes_mini):
    cache = tmp_path / "cache"
    cached = cache / "models" / "dabnet-cityscapes.safetensors"
    cached.parent.mkdir(parents=True)
    shutil.copy(dabnet_checkpoint, cached)  # what `roadseg models import dabnet-cityscapes` leaves
    env = {**os.environ, "ROADSEG_CACHE": str(cache)}
    out = tmp_path / "report"
    run = subprocess.run([*ROADSEG, "eval", "--model", "dabnet-cityscapes", "--cityscapes", str(cityscapes_mini),
                          "--size", "256x128", "--device", "cpu", "--precision", "fp32", "--out", str(out)],
                         capture_output=True, text=True, timeout=300, env=env)
    assert run.returncode == 0, run.stderr
    # stderr is a pipe, not a terminal: plain progress lines, the last one complete.
    assert PROGRESS_LINE.findall(run.stderr)[-1] == ("1", "1"), run.stderr
    info = subprocess.run([*ROADSEG, "models", "info", "dabnet-cityscapes"], capture_output=True, text=True,
                          timeout=120, env=env)
    assert info.returncode == 0, info.stderr
    entry = json.loads(info.stdout)["metrics"][EVAL_METRICS_KEY]["cityscapes:val:256x128:torch:fp32:cpu"]
    measured = json.loads((out / "metrics.json").read_text())
    assert entry["category_iou"] == measured["category_iou"] and entry["frames"] == 1
    assert entry["per_category_iou_void_ignored"]["flat"] == measured["per_class_iou_void_ignored"]["flat"]
    assert "void" not in entry["per_category_iou_void_ignored"]
    # Only the card changed: the weights are the imported ones, bit for bit.
    before, after = _tensors(dabnet_checkpoint), _tensors(cached)
    assert before.keys() == after.keys() and all(before[k].equal(after[k]) for k in before)
    assert sorted(p.name for p in cached.parent.iterdir()) == [cached.name]  # no temp or lock files


def test_which_checkpoints_get_metrics(tmp_path, monkeypatch, dabnet_checkpoint):
    monkeypatch.setenv("ROADSEG_CACHE", str(tmp_path))
    cached = tmp_path / "models" / "dabnet-cityscapes.safetensors"
    cached.parent.mkdir()
    shutil.copy(dabnet_checkpoint, cached)
    assert record_target("dabnet-cityscapes", None, None) == cached  # zoo: by default
    assert record_target("dabnet-cityscapes", None, 3) is None  # a few frames are not the split's score
    assert record_target("dabnet-cityscapes", False, None) is None
    assert record_target(str(dabnet_checkpoint), None, None) is None  # the user's file: only when asked
    assert record_target(str(dabnet_checkpoint), True, None) == dabnet_checkpoint
    assert record_target("demo", None, None) is None  # part of the installed package


def test_card_update_is_skipped_when_the_file_was_replaced(tmp_path, dabnet_checkpoint):
    path = tmp_path / "model.safetensors"
    shutil.copy(dabnet_checkpoint, path)
    stale = path.stat()
    shutil.copy(dabnet_checkpoint, tmp_path / "new.safetensors")
    os.replace(tmp_path / "new.safetensors", path)  # a re-import while eval ran
    original = path.read_bytes()

    def add(card):
        return replace(card, metrics={"x": 1})

    assert update_card(path, add, unchanged_since=stale) is False
    assert path.read_bytes() == original
    assert update_card(path, add, unchanged_since=path.stat()) is True
    assert read_card(path).metrics == {"x": 1}
