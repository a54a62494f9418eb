"""Benchmark results: machine description, the issue's targets checked, a Markdown table."""

from __future__ import annotations

import os
import platform
from dataclasses import asdict, dataclass
from importlib import metadata
from typing import Any

import torch

PACKAGES = ("torch", "torchvision", "segmentation-models-pytorch", "onnxruntime", "onnxruntime-gpu",
            "tensorrt", "opencv-python-headless", "numpy", "pyzmq")
TARGET_MODEL = "dabnet-cityscapes"  # the targets are stated for DABNet
CPU_ORT_SPEEDUP = 1.5  # onnxruntime fp32 over torch eager fp32, 1024x512
CPU_FASTEST_SPEEDUP = 3.0  # issue 9: the fastest CPU backend (OpenVINO bf16 where the CPU has it) vs ORT fp32
PIPELINE_RATIO = 0.9  # pipeline / model-only throughput (1 stream on CPU, 4 on a GPU)
GPU_BATCH8_FPS = 400.0  # 2048x1024 fp16, batch 8
GPU_BATCH1_MS = 4.0  # 2048x1024 fp16, batch 1 latency
GPU_OVERHEAD_P99_MS = 5.0  # capture->publish p99 minus model latency, 4 streams


def machine_name() -> str:
    """A stable file name: the GPU model, or the CPU's core count (hosts here are ephemeral)."""
    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0).lower().replace(" ", "-")
    return f"cpu-{os.cpu_count()}core-{platform.machine()}"


def machine_info() -> dict[str, Any]:
    versions: dict[str, str | None] = {}
    for package in PACKAGES:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    return {"name": machine_name(), "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "arch": platform.machine(), "python": platform.python_version(),
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None, "versions": versions}


@dataclass(frozen=True)
class Target:
    name: str
    value: float
    goal: str
    met: bool


def _rows(results: dict[str, Any], **match: Any) -> list[dict[str, Any]]:
    return [r for r in results["model_only"] if all(r.get(k) == v for k, v in match.items())]


def _pipeline(results: dict[str, Any], streams: int) -> dict[str, Any] | None:
    return next((r for r in results["pipeline"] if r["streams"] == streams), None)


def _latency(results: dict[str, Any], streams: int) -> dict[str, Any] | None:
    return next((r for r in results["latency"] if r["streams"] == streams), None)


def cpu_targets(results: dict[str, Any]) -> list[Target]:
    out = []
    ort = _rows(results, backend="onnxruntime", precision="fp32", size="1024x512", batch=1)
    if ort and ort[0].get("speedup_vs_torch_fp32"):
        value = ort[0]["speedup_vs_torch_fp32"]
        out.append(Target("onnxruntime / torch fp32, DABNet 1024x512", value, f">= {CPU_ORT_SPEEDUP}x",
                          value >= CPU_ORT_SPEEDUP))
    rows = _rows(results, size="1024x512", batch=1)
    if ort and rows:
        best = max(rows, key=lambda r: r["fps"])
        value = best["fps"] / ort[0]["fps"]
        out.append(Target(f"fastest CPU backend ({best['backend']} {best['precision']}) / onnxruntime fp32, "
                          "DABNet 1024x512", value, f">= {CPU_FASTEST_SPEEDUP}x", value >= CPU_FASTEST_SPEEDUP))
    one = _pipeline(results, 1)
    if one:
        value = one["pipeline_over_model_only"]
        out.append(Target("pipeline / model-only, 1 stream", value, f">= {PIPELINE_RATIO}", value >= PIPELINE_RATIO))
    return out


def gpu_targets(results: dict[str, Any]) -> list[Target]:
    out = []
    fp16 = _rows(results, precision="fp16", size="2048x1024")
    batch8 = [r["fps"] for r in fp16 if r["batch"] == 8]
    if batch8:
        out.append(Target("fp16 2048x1024 batch 8 frames/s (best backend)", max(batch8), f">= {GPU_BATCH8_FPS:.0f}",
                          max(batch8) >= GPU_BATCH8_FPS))
    batch1 = [r["latency_ms_p50"] for r in fp16 if r["batch"] == 1]
    if batch1:
        out.append(Target("fp16 2048x1024 batch 1 latency ms (best backend)", min(batch1),
                          f"<= {GPU_BATCH1_MS:.0f}", min(batch1) <= GPU_BATCH1_MS))
    four = _pipeline(results, 4)
    if four:
        value = four["pipeline_over_model_only"]
        out.append(Target("pipeline / model-only, 4 streams", value, f">= {PIPELINE_RATIO}", value >= PIPELINE_RATIO))
    paced = _latency(results, 4)
    if paced:
        value = paced["overhead_ms_p99"]
        out.append(Target("capture->publish p99 - model latency, 4 streams, ms", value,
                          f"<= {GPU_OVERHEAD_P99_MS:.0f}", value <= GPU_OVERHEAD_P99_MS))
    return out


def check_targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's targets that this run measured (none unless the model is DABNet)."""
    if results["model"] != TARGET_MODEL:
        return []
    targets = gpu_targets(results) if results["device"] == "cuda" else cpu_targets(results)
    return [asdict(t) for t in targets]


def markdown(results: dict[str, Any]) -> str:
    lines = [f"Model-only ({results['model']}, {results['machine']['name']}; calls interleaved across backends):",
             "", "| backend | precision | input | batch | frames/s | p50 ms | p99 ms | vs torch fp32 |",
             "|---|---|---|---|---|---|---|---|"]
    for r in results["model_only"]:
        speedup = r.get("speedup_vs_torch_fp32")
        lines.append(f"| {r['backend']} | {r['precision']} | {r['size']} | {r['batch']} | {r['fps']:.1f} "
                     f"| {r['latency_ms_p50']:.1f} | {r['latency_ms_p99']:.1f} "
                     f"| {f'{speedup:.2f}x' if speedup else '-'} |")
    lines += ["", "Pipeline, as fast as it goes (replayed video: decode, batching, inference, ZeroMQ publish; "
              "median of the bracketed rounds):", "",
              "| streams | backend | precision | max batch | frames/s | model-only frames/s "
              "| pipeline / model-only |", "|---|---|---|---|---|---|---|"]
    for r in results["pipeline"]:
        lines.append(f"| {r['streams']} | {r['backend']} | {r['precision']} | {r['max_batch']} | {r['fps']:.1f} "
                     f"| {r['model_only_fps']:.1f} | {r['pipeline_over_model_only']:.2f} |")
    lines += ["", f"Latency below saturation (each stream paced at an equal share of "
              f"{results['settings']['load']:.0%} of the measured pipeline throughput):", "",
              "| streams | frames/s | capture->publish p50 ms | p99 ms | model ms (p50) | p99 - model ms |",
              "|---|---|---|---|---|---|"]
    for r in results["latency"]:
        lines.append(f"| {r['streams']} | {r['fps']:.1f} | {r['e2e_ms_p50']:.1f} | {r['e2e_ms_p99']:.1f} "
                     f"| {r['model_ms_p50']:.1f} | {r['overhead_ms_p99']:.1f} |")
    if results["targets"]:
        lines += ["", "Targets:", "", "| target | measured | goal | met |", "|---|---|---|---|"]
        for t in results["targets"]:
            lines.append(f"| {t['name']} | {t['value']:.2f} | {t['goal']} | {'yes' if t['met'] else 'NO'} |")
    return "\n".join(lines)
