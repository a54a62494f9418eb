"""Calibration benchmark: what undistortion and the bird's-eye projection cost per frame, against the model.

For each frame size (default 1024x512 and 2048x1024), a camera like the synthetic drive's (f = 0.8 x
width) with a dashcam's barrel distortion and a ground plane 1.3 m up, and the default grid (40 x 20 m
in 0.1 m cells):

* **undistort**: one RGB frame through the precomputed maps, as the pipeline does on a source's decode
  thread: ``cv2.remap`` on the CPU; on a GPU (where there is one) ``grid_sample``, upload and download
  included;
* **bev**: the final mask and a road layer onto the grid (``BevProjector.project``, twice), as the
  post-processing thread does;
* **model**: one frame through the model at that size (torch backend, batch 1), the pipeline's inference:
  DABNet (the project's reference model) and the small demo model.

Each iteration times all three once, in that order, so the ratio ``(undistort + bev) / model`` compares
numbers that saw the same machine; medians (p50) over the iterations. One-off costs (maps, lookup) are
reported apart: they are paid once per stream.

    python -m benchmarks.calibration [--sizes 1024x512,2048x1024] [--iterations 20] [--models dabnet-cityscapes,demo]

Results: ``benchmarks/results/calibration-<machine>.json`` and a Markdown table on stdout for the README.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.report import machine_info, machine_name
from calibration.bev import BevGrid, BevProjector
from calibration.camera import CameraModel, Pose
from calibration.ground import ground_from_pose
from calibration.undistort import CpuUndistorter, TorchUndistorter
from models.cli_args import size_arg
from models.datasets.synthetic_scene import SyntheticDrive

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results"
DISTORTION = np.array([-0.28, 0.09, 0.0008, -0.0006, -0.012])


def camera_for(width: int, height: int) -> CameraModel:
    f = 0.8 * width
    K = np.array([[f, 0.0, width / 2 - 0.5], [0.0, f, 0.42 * height - 0.5], [0.0, 0.0, 1.0]])
    camera = CameraModel(width, height, K, "plumb_bob", DISTORTION, K)
    return camera.with_ground(ground_from_pose(camera, Pose(1.3)))


def _ms(start_ns: int) -> float:
    return (time.perf_counter_ns() - start_ns) / 1e6


def _stats(samples: list[float]) -> dict[str, float]:
    return {"p50": round(float(np.percentile(samples, 50)), 3), "p99": round(float(np.percentile(samples, 99)), 3)}


def measure(width: int, height: int, iterations: int, model: str) -> dict[str, Any]:
    import torch

    from models.backends.registry import create_backend
    from models.store.registry import load_model

    camera = camera_for(width, height)
    image, truth = SyntheticDrive(3, width, height).render(5)
    road = (truth == 1).view(np.uint8)
    started = time.perf_counter_ns()
    cpu = CpuUndistorter(camera)
    maps_ms = _ms(started)
    gpu = TorchUndistorter(camera, "cuda") if torch.cuda.is_available() else None
    projector = BevProjector(camera, BevGrid())
    started = time.perf_counter_ns()
    projector.lookup((height, width))
    lookup_ms = _ms(started)
    net, card = load_model(model)
    backend = create_backend("torch", net, card, device="auto", precision="auto", input_size=(width, height))
    backend.warmup((1,))
    for _ in range(2):  # warm every path
        cpu.image(image)
        if gpu is not None:
            gpu.image(image)
        projector.project(truth)
    samples: dict[str, list[float]] = {"undistort_cpu": [], "undistort_gpu": [], "bev": [], "model": []}
    for _ in range(iterations):
        started = time.perf_counter_ns()
        cpu.image(image)
        samples["undistort_cpu"].append(_ms(started))
        if gpu is not None:
            started = time.perf_counter_ns()
            gpu.image(image)
            samples["undistort_gpu"].append(_ms(started))
        started = time.perf_counter_ns()
        projector.project(truth)
        projector.project(road)
        samples["bev"].append(_ms(started))
        started = time.perf_counter_ns()
        backend.infer([image])
        samples["model"].append(_ms(started))
    backend.close()
    row: dict[str, Any] = {"size": f"{width}x{height}", "model": card.model_id, "device": backend.device,
                           "precision": str(backend.precision), "maps_once_ms": round(maps_ms, 1),
                           "lookup_once_ms": round(lookup_ms, 1)}
    for name, values in samples.items():
        row[f"{name}_ms"] = _stats(values) if values else None
    model_ms = row["model_ms"]["p50"]
    row["cpu_fraction_of_model"] = round((row["undistort_cpu_ms"]["p50"] + row["bev_ms"]["p50"]) / model_ms, 4)
    row["gpu_fraction_of_model"] = None if gpu is None else round(
        (row["undistort_gpu_ms"]["p50"] + row["bev_ms"]["p50"]) / model_ms, 4)
    return row


def table(results: dict[str, Any]) -> str:
    lines = [f"Calibration cost per frame ({results['machine']['name']}; p50 of {results['iterations']} "
             "interleaved iterations; model: torch backend, batch 1, at the frame size)", "",
             "| frame | undistort CPU ms | undistort GPU ms | BEV (classes + road) ms | model ms | "
             "(undistort + BEV) / model |", "|---|---|---|---|---|---|"]
    for r in results["rows"]:
        gpu = "-" if r["undistort_gpu_ms"] is None else f"{r['undistort_gpu_ms']['p50']:.2f}"
        fraction = f"{100 * r['cpu_fraction_of_model']:.1f} % (CPU)"
        if r["gpu_fraction_of_model"] is not None:
            fraction += f", {100 * r['gpu_fraction_of_model']:.1f} % (GPU)"
        lines.append(f"| {r['size']} | {r['undistort_cpu_ms']['p50']:.2f} | {gpu} | {r['bev_ms']['p50']:.2f} | "
                     f"{r['model_ms']['p50']:.1f} ({r['model']}, {r['device']}) | {fraction} |")
    lines.append("")
    lines.append("Once per stream: undistortion maps " + ", ".join(f"{r['maps_once_ms']} ms ({r['size']})"
                                                                      for r in results["rows"])
                 + "; BEV lookup " + ", ".join(f"{r['lookup_once_ms']} ms" for r in results["rows"]) + ".")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.calibration", description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="1024x512,2048x1024", help="frame sizes WxH, comma-separated")
    parser.add_argument("--iterations", type=int, default=20)
    parser.add_argument("--models", default="dabnet-cityscapes,demo",
                        help="models for the reference time, comma-separated (default dabnet-cityscapes,demo)")
    parser.add_argument("--out", type=Path, help="results JSON (default benchmarks/results/calibration-<machine>"
                                                  ".json)")
    args = parser.parse_args(argv)
    sizes = [size_arg(s) for s in args.sizes.split(",")]
    rows = [measure(w, h, args.iterations, model) for model in args.models.split(",") for w, h in sizes]
    results = {"benchmark": "calibration", "machine": machine_info(), "iterations": args.iterations,
               "command": " ".join(["python -m benchmarks.calibration", *(argv if argv is not None else sys.argv[1:])]),
               "rows": rows}
    out = args.out or RESULTS / f"calibration-{machine_name()}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(table(results))
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
