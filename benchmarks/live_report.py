"""Arithmetic and reporting for :mod:`benchmarks.live`: CPU use per process, percentiles,
and the Markdown table for the README."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import numpy as np


def machine_busy_s() -> float | None:
    """CPU seconds spent busy by the whole machine since boot, all cores (Linux), or None."""
    try:
        values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    except (OSError, ValueError):
        return None
    idle = values[3] + values[4]  # idle, iowait
    return (sum(values) - idle) / os.sysconf("SC_CLK_TCK")


def process_cpu_s(pid: int) -> float | None:
    """CPU seconds (user + system) of process ``pid`` so far (Linux), or None."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime


def cpu_snapshot(server_pid: int) -> tuple[float | None, float, float | None]:
    return machine_busy_s(), time.process_time(), process_cpu_s(server_pid)


def cores_used(before: tuple[float | None, float, float | None], after: tuple[float | None, float, float | None],
               span_s: float) -> dict[str, float | None]:
    """Mean cores busy over the window: this process (roadseg), the camera server, and everything
    else on the machine. ``other`` well above zero means a neighbour competed for the CPUs."""
    own = (after[1] - before[1]) / span_s
    server = None if before[2] is None or after[2] is None else (after[2] - before[2]) / span_s
    total = None if before[0] is None or after[0] is None else (after[0] - before[0]) / span_s
    other = None if total is None or server is None else max(0.0, total - own - server)
    return {"roadseg": round(own, 2), "camera_server": None if server is None else round(server, 2),
            "other": None if other is None else round(other, 2), "machine": None if total is None else round(total, 2)}


def percentiles(values_ms: list[float]) -> dict[str, float | None]:
    if not values_ms:
        return {"p50": None, "p99": None, "max": None, "samples": 0}
    data = np.asarray(values_ms, dtype=np.float64)
    return {"p50": round(float(np.percentile(data, 50)), 2), "p99": round(float(np.percentile(data, 99)), 2),
            "max": round(float(data.max()), 2), "samples": len(values_ms)}


def p50_max(values: list[float | None]) -> dict[str, Any]:
    """Median and max of the repetitions that completed; ``failed`` counts those that did not."""
    done = [v for v in values if v is not None]
    return {"p50": round(float(np.median(done)), 3) if done else None,
            "max": round(max(done), 3) if done else None,
            "runs": len(values), "failed": len(values) - len(done)}


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def _s(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def markdown(results: dict[str, Any]) -> str:
    s, b, cam = results["steady"], results["backend"], results["camera"]
    dropped = ", ".join(f"{cause} {n}" for cause, n in s["dropped"].items()) or "none"
    lines = [f"Live camera ({results['model']}, {b['name']} {b['precision']} on {b['device']}, "
             f"{results['machine']['name']}; test RTSP camera on loopback, {cam['size']} at {cam['fps']} frames/s, "
             f"H.264 over RTSP/TCP; {s['seconds']:.0f} s steady state):", "",
             "| latency | p50 ms | p99 ms | max ms |", "|---|---|---|---|"]
    for key, label in (("camera_to_publish_ms", "camera send -> mask published"),
                       ("capture_to_publish_ms", "roadseg capture -> published"),
                       ("camera_to_capture_ms", "camera send -> capture (encode, RTSP, decode, buffering)")):
        p = s[key]
        lines.append(f"| {label} | {_ms(p['p50'])} | {_ms(p['p99'])} | {_ms(p['max'])} |")
    cpu = s["cpu_cores_used"]
    lines += ["", f"{s['masks_per_s']:.1f} masks/s; frames read {s['frames_read_per_s']:.1f}/s of "
              f"{cam['fps']} sent; dropped: {dropped}; unreadable stamps: {s['stamps_unreadable']} of {s['masks']}. "
              f"CPU cores busy (of {results['machine']['cpu_count']}): roadseg {cpu['roadseg']}, "
              f"camera server {cpu['camera_server']}, other processes {cpu['other']}.",
              "", "| fault | runs | p50 s | max s |", "|---|---|---|---|"]
    rows = [(f"server killed, down {results['settings']['down_s']:g} s, restarted -> first mask of a new frame",
             results["restart_summary"]["first_new_mask_s"]),
            (f"restarted -> first new mask within {results['settings']['max_age_ms']:g} ms of the camera",
             results["restart_summary"]["within_budget_s"]),
            ("SIGSTOP -> stream reported stalled", results["stall_summary"]["stall_detected_s"]),
            ("SIGCONT -> live with a mask of a new frame", results["stall_summary"]["live_with_fresh_mask_s"])]
    for label, r in rows:
        if not r["runs"]:
            continue
        failed = f" ({r['failed']} failed)" if r["failed"] else ""
        lines.append(f"| {label} | {r['runs']}{failed} | {_s(r['p50'])} | {_s(r['max'])} |")
    budget = f"{results['settings']['max_age_ms']:g}"
    key = f"over_{budget}ms_until_next_fault"
    faults = [*results["restarts"], *results["stalls"]]
    late_total = sum(f[key]["late"] for f in faults)
    valid_total = sum(f[key]["late_marked_valid"] for f in faults)
    steady_late = s[f"over_{budget}ms"]
    lines += ["", f"Masks published more than {budget} ms after the camera sent the frame: "
              f"{steady_late['late']} in the steady state ({steady_late['late_marked_valid']} marked valid), "
              f"{late_total} after the {len(faults)} faults ({valid_total} marked valid)."]
    return "\n".join(lines)
