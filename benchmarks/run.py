"""Measure, in one run on one machine: model-only throughput/latency, and whole-pipeline
throughput and capture->publish latency with 1..N replayed streams; print the ratios.

    python -m benchmarks.run [--model demo] [--streams 1,2,4] [--frames 120] [--quick]

Results land in ``benchmarks/results/<machine>.json``. Targets are ratios measured
in the same run (pipeline / model-only), never absolute times in tests.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import time
from dataclasses import replace
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch

from models.backends import TorchBackend
from models.registry import load_model
from stream.batcher import BatchConfig
from stream.config import PipelineConfig
from stream.pipeline import Pipeline
from stream.sources.synthetic import SyntheticDrive

RESULTS = Path(__file__).resolve().parent / "results"
WARMUP = 3


def machine_info() -> dict[str, Any]:
    versions: dict[str, str | None] = {}
    for package in ("torch", "torchvision", "segmentation-models-pytorch", "opencv-python-headless",
                    "onnxruntime", "numpy", "pyzmq"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    return {
        "name": machine_name(),
        "cpu_threads": torch.get_num_threads(),
        "arch": platform.machine(),
        "python": platform.python_version(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "versions": versions,
    }


def machine_name() -> str:
    """A stable file name: the GPU model, or the CPU's thread count (hosts here are ephemeral)."""
    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0).lower().replace(" ", "-")
    return f"cpu-{os.cpu_count()}core-{platform.machine()}"


def model_only(backend: TorchBackend, frames: list[np.ndarray], batch: int, repeats: int) -> dict[str, float]:
    """Backend.infer on frames already in memory: the ceiling the pipeline is compared to."""
    for _ in range(WARMUP):
        backend.infer(frames[:batch])
    times = []
    for i in range(repeats):
        chunk = [frames[(i * batch + j) % len(frames)] for j in range(batch)]
        start = time.monotonic_ns()
        backend.infer(chunk)
        times.append((time.monotonic_ns() - start) / 1e6)
    return {"batch": batch, "fps": batch * 1000 / statistics.mean(times),
            "latency_ms_p50": float(np.percentile(times, 50)), "latency_ms_p99": float(np.percentile(times, 99))}


def pipeline_run(config: PipelineConfig, backend: TorchBackend) -> dict[str, Any]:
    summary = asyncio.run(Pipeline(config, lambda: backend).run())
    e2e = summary["latency_ms"]["end_to_end"]
    return {"frames": summary["frames"], "fps": summary["fps"], "e2e_ms_p50": e2e["p50"],
            "e2e_ms_p99": e2e["p99"], "inference_ms_p50": summary["latency_ms"]["inference"]["p50"],
            "dropped": summary["dropped_total"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="demo")
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--streams", default="1,2,4")
    parser.add_argument("--frames", type=int, default=120, help="frames per stream")
    parser.add_argument("--max-batch", type=int, default=4)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    model, card = load_model(args.model)
    backend = TorchBackend(model, card, precision=args.precision)
    width, height = card.input.size
    drive = SyntheticDrive(seed=7, width=width, height=height)
    frames = [drive.render(i)[0] for i in range(16)]
    results: dict[str, Any] = {"machine": machine_info(), "model": card.model_id, "device": backend.device,
                               "precision": backend.precision, "input": f"{width}x{height}",
                               "model_only": [], "pipeline": []}
    for batch in sorted({1, args.max_batch}):
        results["model_only"].append(model_only(backend, frames, batch, repeats=max(10, args.frames // batch)))
        print("model-only", results["model_only"][-1], flush=True)
    base = PipelineConfig(sources=("x",), model=args.model, zmq_address="tcp://127.0.0.1:0", viewer=None,
                          stats_interval_s=0, batch=BatchConfig(max_batch=args.max_batch, max_wait_ms=4))
    best_model_fps = max(r["fps"] for r in results["model_only"])
    for streams in (int(s) for s in args.streams.split(",")):
        sources = tuple(f"s{i}=synthetic:seed={i},size={width}x{height},frames={args.frames}" for i in range(streams))
        row = pipeline_run(replace(base, sources=sources), backend)
        row.update(streams=streams, ratio_vs_model_only=row["fps"] / best_model_fps)
        results["pipeline"].append(row)
        print("pipeline", row, flush=True)
    out = args.out or RESULTS / f"{machine_name()}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
