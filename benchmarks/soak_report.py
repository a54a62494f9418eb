"""Arithmetic and reporting for :mod:`benchmarks.soak`: this process's resources from ``/proc``,
least-squares slopes over the windows, the targets, and the Markdown table for the README."""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

import numpy as np

SECONDS_PER_HOUR = 3600.0
KB_PER_MB = 1024.0
# Targets (PASS/FAIL). Growth this small over hours is noise of the allocator and caches; more
# is a leak a week-long deployment would feel.
RSS_SLOPE_MAX_MB_PER_H = 20.0
P99_SLOPE_MAX_SHARE_PER_H = 0.10  # of the first fault-free window's p99, per hour
COUNT_TOLERANCE = 2  # threads / fds at the end may exceed the post-warm-up count by this much
COUNTED = ("threads", "os_threads", "fds")
# A slope fitted over less than this is start-up noise extrapolated to an hour: shown, not judged.
MIN_FIT_SPAN_S = 600.0


# ---------------------------------------------------------------------- /proc


def _status_kb(field: str, status: Path = Path("/proc/self/status")) -> int | None:
    """A ``kB`` field of ``/proc/self/status`` (``VmRSS``, ``VmHWM``), or None off Linux."""
    try:
        for line in status.read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def _count(directory: str) -> int | None:
    try:
        return len(os.listdir(directory))
    except OSError:
        return None


def resources() -> dict[str, Any]:
    """This process now: resident and peak memory, Python and OS threads, open fds, load."""
    rss, peak = _status_kb("VmRSS"), _status_kb("VmHWM")
    return {
        "rss_mb": None if rss is None else round(rss / KB_PER_MB, 1),
        "peak_rss_mb": None if peak is None else round(peak / KB_PER_MB, 1),
        "threads": threading.active_count(),  # Python threads (reader threads among them)
        "os_threads": _count("/proc/self/task"),  # also FFmpeg's, torch's and ZeroMQ's native threads
        "fds": _count("/proc/self/fd"),
        "loadavg_1min": round(os.getloadavg()[0], 2),
    }


def settled(now: dict[str, Any], baseline: dict[str, Any], tolerance: int = COUNT_TOLERANCE) -> bool:
    """Threads and fds no more than ``tolerance`` above the baseline."""
    return all(now[k] is None or baseline[k] is None or now[k] <= baseline[k] + tolerance for k in COUNTED)


# ---------------------------------------------------------------------- arithmetic


def slope(xs: list[float], ys: list[float]) -> float | None:
    """Least-squares slope of ``ys`` over ``xs``; None with fewer than two points or one x."""
    if len(xs) != len(ys) or len(xs) < 2:
        return None
    x, y = np.asarray(xs, dtype=np.float64), np.asarray(ys, dtype=np.float64)
    dx = x - x.mean()
    denominator = float(np.dot(dx, dx))
    if denominator == 0.0:
        return None
    return float(np.dot(dx, y - y.mean()) / denominator)


def per_hour(windows: list[dict[str, Any]], value: Any) -> float | None:
    """Slope per hour of ``value(window)`` over the windows' end times, skipping Nones."""
    points = [(w["t_end_s"] / SECONDS_PER_HOUR, value(w)) for w in windows]
    points = [(x, y) for x, y in points if y is not None]
    result = slope([x for x, _ in points], [y for _, y in points])
    return None if result is None else round(result, 3)


def baseline_index(warmup_windows: int, windows: int) -> int:
    """The window whose closing sample is "after the warm-up" (at least one window is measured)."""
    return max(min(warmup_windows, windows - 1), 1) - 1


def summarize(windows: list[dict[str, Any]], restarts: list[dict[str, Any]], stalls: list[dict[str, Any]],
              warmup_windows: int, end: dict[str, Any]) -> dict[str, Any]:
    """Slopes after the warm-up (latency over fault-free windows only), counts at the end against
    those after the warm-up, and the restarts' recoveries."""
    if not windows:
        raise ValueError("no windows to summarize")
    warmup = min(warmup_windows, len(windows) - 1)
    after = windows[warmup:]
    baseline = windows[baseline_index(warmup, len(windows))]["resources"]  # sampled as the warm-up ended
    clean = [w for w in after if not w["faults"]]
    first_p99 = next((w["camera_to_publish_ms"]["p99"] for w in clean
                      if w["camera_to_publish_ms"]["p99"] is not None), None)
    return {
        "warmup_windows": warmup,
        "fit_span_s": round(after[-1]["t_end_s"] - (windows[warmup - 1]["t_end_s"] if warmup else 0.0), 1),
        "windows_measured": len(after),
        "fault_free_windows": len(clean),
        "rss_mb_per_h": per_hour(after, lambda w: w["resources"]["rss_mb"]),
        "p50_ms_per_h": per_hour(clean, lambda w: w["camera_to_publish_ms"]["p50"]),
        "p99_ms_per_h": per_hour(clean, lambda w: w["camera_to_publish_ms"]["p99"]),
        "first_fault_free_p99_ms": first_p99,
        "peak_rss_mb": max((w["resources"]["peak_rss_mb"] or 0.0) for w in windows),
        "after_warmup": {k: baseline[k] for k in (*COUNTED, "rss_mb")},
        "end": {k: end[k] for k in (*COUNTED, "rss_mb")},
        "restarts": len(restarts),
        "restarts_reconnected": sum(bool(r["reconnected"]) for r in restarts),
        "stalls": len(stalls),
        "stalls_recovered": sum(bool(s["recovered"]) for s in stalls),
    }


def _target(name: str, value: Any, goal: str, met: bool | None) -> dict[str, Any]:
    return {"name": name, "value": value, "goal": goal, "met": met}


def targets(summary: dict[str, Any]) -> list[dict[str, Any]]:
    """PASS/FAIL rows; ``met`` is None where the run was too short to tell."""
    judged = summary["fit_span_s"] >= MIN_FIT_SPAN_S
    rss = summary["rss_mb_per_h"]
    p99, first = summary["p99_ms_per_h"], summary["first_fault_free_p99_ms"]
    p99_limit = None if first is None else round(P99_SLOPE_MAX_SHARE_PER_H * first, 2)
    rows = [
        _target("RSS slope after warm-up (MB/h)", rss, f"< {RSS_SLOPE_MAX_MB_PER_H:g}",
                None if rss is None or not judged else rss < RSS_SLOPE_MAX_MB_PER_H),
        _target("p99 latency slope, fault-free windows (ms/h)", p99,
                f"< {P99_SLOPE_MAX_SHARE_PER_H:.0%} of first p99 ({p99_limit} ms/h)",
                None if p99 is None or p99_limit is None or not judged else p99 < p99_limit),
    ]
    start, end = summary["after_warmup"], summary["end"]
    for key in COUNTED:
        ok = None if start[key] is None or end[key] is None else end[key] <= start[key] + COUNT_TOLERANCE
        rows.append(_target(f"{key} at the end (after warm-up {start[key]})", end[key],
                            f"<= {start[key]} + {COUNT_TOLERANCE}", ok))
    rows.append(_target("restarts reconnected", f"{summary['restarts_reconnected']}/{summary['restarts']}",
                        "all", summary["restarts_reconnected"] == summary["restarts"]))
    return rows


# ---------------------------------------------------------------------- Markdown


def _verdict(met: bool | None) -> str:
    return "n/a" if met is None else ("PASS" if met else "FAIL")


def _num(value: Any, fmt: str = ".1f") -> str:
    return "-" if value is None else format(value, fmt)


def markdown(results: dict[str, Any]) -> str:
    s, cam, settings = results["summary"], results["camera"], results["settings"]
    b = results["backend"]
    lines = [f"Soak ({results['model']}, {b['name']} {b['precision']} on {b['device']}, "
             f"{results['machine']['name']}; test RTSP camera {cam['size']} at {cam['fps']} frames/s; "
             f"{settings['minutes']:g} min in {settings['window_s']:g} s windows, first {s['warmup_windows']} "
             f"skipped; server killed every {settings['restart_every_s']:g} s, stalled every "
             f"{settings['stall_every_s']:g} s (0: never); subscriber {'on' if settings['subscriber'] else 'off'}):",
             "", "| target | value | goal | verdict |", "|---|---|---|---|"]
    lines += [f"| {t['name']} | {t['value']} | {t['goal']} | {_verdict(t['met'])} |" for t in results["targets"]]
    lines += ["", f"p50 slope {_num(s['p50_ms_per_h'], '.2f')} ms/h over {s['fault_free_windows']} fault-free "
              f"windows; peak RSS {_num(s['peak_rss_mb'])} MB; slopes fitted over {s['fit_span_s']:.0f} s "
              f"(judged from {MIN_FIT_SPAN_S:.0f} s: n/a below).", "",
              "| window end s | faults | masks/s | send->publish p50 / p99 ms | capture->publish p50 / p99 ms "
              "| RSS MB | threads | fds |", "|---|---|---|---|---|---|---|---|"]
    for w in results["windows"]:
        cam_ms, cap_ms, r = w["camera_to_publish_ms"], w["capture_to_publish_ms"], w["resources"]
        lines.append(f"| {w['t_end_s']:.0f} | {','.join(w['faults']) or '-'} | {w['masks_per_s']:.1f} "
                     f"| {_num(cam_ms['p50'])} / {_num(cam_ms['p99'])} | {_num(cap_ms['p50'])} / {_num(cap_ms['p99'])} "
                     f"| {_num(r['rss_mb'])} | {r['threads']} ({r['os_threads']}) | {r['fds']} |")
    if results["restarts"]:
        lines += ["", "| restart at s | reconnected | first new mask s |", "|---|---|---|"]
        lines += [f"| {r['at_s']:.0f} | {'yes' if r['reconnected'] else 'no'} | {_num(r['first_new_mask_s'], '.2f')} |"
                  for r in results["restarts"]]
    return "\n".join(lines)
