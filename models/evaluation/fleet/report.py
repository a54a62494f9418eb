"""The results folder of ``roadseg fleet eval``: metrics.json, frames.jsonl, report.md and its PNGs.

``metrics.json`` holds the overall numbers under the same names as ``roadseg eval``'s (``category_iou``,
``mean_iou``, ``per_class_iou``, ``pixel_accuracy``, ``confusion``...; drives that failed left out),
then ``drives`` (each with its own numbers, status and errors), ``failed_drives``, ``throughput``
(frames/s overall, per actor, over time), ``latency_ms`` (per frame: decode, model, scoring, total)
and ``worst_frames``. ``frames.jsonl`` has one line per frame. ``report.md`` is for a person: the
tables, per-drive IoU, throughput over time, the confusion matrix and image | truth | prediction
panels of the worst frames. Plots are drawn with OpenCV, as eval's.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from models.classes import CLASS_NAMES
from models.evaluation import metrics
from models.evaluation.fleet.aggregate import metric_fields, percentiles, throughput_timeline
from models.evaluation.fleet.ray_job import FleetRun
from models.evaluation.metrics import CATEGORY_IOU_LABEL, MEAN_IOU_LABEL, percent
from models.evaluation.report import draw_confusion, draw_panel, roadseg_version
from models.evaluation.result import TIMING_KEYS, EvalResult, finite_or_none

WHITE, BLACK, GREY = (255, 255, 255), (0, 0, 0), (120, 120, 120)
BAR_CATEGORY = (8, 48, 107)
BAR_MEAN = (107, 174, 214)
BAR_FAILED = (200, 60, 60)
FONT = cv2.FONT_HERSHEY_SIMPLEX
QUANTILES = ("mean", "p50", "p90", "p99", "max")


def overall_result(run: FleetRun) -> EvalResult:
    """The overall numbers as an :class:`EvalResult` (what eval's confusion plot draws)."""
    cm, road, ignored, scored = run.aggregate.overall()
    return EvalResult(
        model_spec=run.config.model, model_id=run.model_id, backend=run.config.backend,
        card_input_size=run.card_input_size, input_size=run.input_size, device=run.plan.device,
        precision=run.config.precision, root=f"{len(run.drives)} drives", split="fleet", city=None,
        frames=scored, batch=run.config.batch, confusion=cm, ignored_pixels=ignored,
        elapsed_s=run.elapsed_s, timing_ms=dict.fromkeys(TIMING_KEYS, 0.0), road_confusion=road,
    )


def throughput(run: FleetRun) -> dict[str, Any]:
    frames = run.aggregate.frames
    done = sorted(f["done_at"] for f in frames)
    steady = (len(done) - 1) / (done[-1] - done[0]) if len(done) > 1 and done[-1] > done[0] else None
    actors = [{"actor": name, "pid": a["pid"], "frames": a["frames"], "busy_s": round(a["busy_s"], 3),
               "frames_per_s_busy": round(a["frames"] / a["busy_s"], 3) if a["busy_s"] > 0 else None}
              for name, a in sorted(run.aggregate.actors.items())]
    return {
        "frames": len(frames),
        "elapsed_s": round(run.elapsed_s, 3),  # dataset start to the last frame, actor start-up included
        "frames_per_s": round(len(frames) / run.elapsed_s, 3) if run.elapsed_s > 0 else None,
        "startup_s": round(done[0] - run.started_at, 3) if done else None,  # to the first frame done
        # first frame done to the last: the rate once the actors are up (what eval's images/s measures)
        "steady_frames_per_s": round(steady, 3) if steady else None,
        "actors": actors,
        "actor_processes": len(actors),  # more than the pool's size when workers were lost and restarted
        # from the first frame done (the start-up before it is startup_s)
        "timeline": throughput_timeline(done, done[0]) if done else [],
    }


def latency(run: FleetRun) -> dict[str, Any]:
    frames = run.aggregate.frames
    return {key: percentiles([f[key] for f in frames]) for key in ("decode_ms", "model_ms", "score_ms")} | {
        "total_ms": percentiles([f["decode_ms"] + f["model_ms"] + f["score_ms"] for f in frames])}


def metrics_dict(run: FleetRun) -> dict[str, Any]:
    cm, road, ignored, scored = run.aggregate.overall()
    drives = run.aggregate.drive_reports()
    body: dict[str, Any] = {
        "roadseg_version": roadseg_version(),
        "ray_version": run.ray_version,
        "model_spec": run.config.model,
        "model_id": run.model_id,
        "backend": run.config.backend,
        "card_input_size": list(run.card_input_size),
        "input_size": list(run.input_size),
        "device": run.plan.device,
        "precision": run.config.precision,
        "batch": run.config.batch,
        "frames": scored,  # scored frames of the drives that did not fail: what the numbers below cover
        "frames_done": len(run.aggregate.frames),
        **metric_fields(cm, ignored),
        "road_iou": finite_or_none(metrics.road_iou(road)) if road is not None else None,
        "road_confusion": road.tolist() if road is not None else None,
        "drives": drives,
        "failed_drives": [{"name": d["name"], "spec": d["spec"], "errors": d["errors"], "error_count": d["error_count"]}
                          for d in drives if d["status"] == "failed"],
        "throughput": throughput(run),
        "latency_ms": latency(run),
        "duplicates": run.aggregate.duplicates,  # frames a retry delivered twice, counted once
        "worst_frames": [{"drive": w.drive, "frame": w.frame, "name": w.name,
                          "category_iou": finite_or_none(w.rank[0]), "mean_iou": finite_or_none(w.mean_iou),
                          "pixel_accuracy": finite_or_none(w.pixel_accuracy), "panel": _panel_name(i, w.drive, w.name)
                          if w.sample is not None else None} for i, w in enumerate(run.aggregate.worst)],
        "cluster": {"address": run.address, "nodes": run.plan.nodes, "resources": run.plan.cluster,
                    "actors": run.plan.actors, "cpus_per_actor": run.plan.cpus_per_actor,
                    "gpus_per_actor": run.plan.gpus_per_actor, "torch_threads_per_actor": run.plan.threads,
                    "decode_cpus_per_task": run.plan.decode_cpus, "decode_tasks": run.plan.decode_tasks},
        "masks": run.config.masks,
    }
    return body


def _panel_name(position: int, drive: str, frame: str) -> str:
    safe = re.sub(r"[^A-Za-z0-9._-]+", "-", f"{drive}-{frame}").strip("-")
    return f"worst-{position + 1:02d}-{safe}.png"


def write_report(run: FleetRun, out_dir: Path) -> dict[str, Any]:
    """Write the results folder; returns metrics.json's content."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    body = metrics_dict(run)
    overall = overall_result(run)
    _png(out_dir / "confusion.png", draw_confusion(overall))
    _png(out_dir / "drives.png", draw_drive_iou(body["drives"]))
    _png(out_dir / "throughput.png", draw_throughput(body["throughput"]["timeline"]))
    for i, worst in enumerate(run.aggregate.worst):
        if worst.sample is not None:
            _png(out_dir / _panel_name(i, worst.drive, worst.name), draw_panel(worst.sample, run.model_id))
    (out_dir / "metrics.json").write_text(json.dumps(body, indent=2) + "\n", encoding="utf-8")
    with (out_dir / "frames.jsonl").open("w", encoding="utf-8") as handle:
        for frame in sorted(run.aggregate.frames, key=lambda f: (f["drive"], f["frame"])):
            handle.write(json.dumps(frame) + "\n")
    (out_dir / "report.md").write_text(markdown(body), encoding="utf-8")
    return body


def _png(path: Path, rgb: np.ndarray) -> None:
    if not cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)):
        raise OSError(f"cannot write {path}")


# --- plots ---------------------------------------------------------------------------------------


def _text(img: np.ndarray, text: str, org: tuple[int, int], scale: float = 0.45,
          color: tuple[int, int, int] = BLACK) -> None:
    cv2.putText(img, text, org, FONT, scale, color, 1, cv2.LINE_AA)


def draw_drive_iou(drives: list[dict[str, Any]]) -> np.ndarray:
    """Horizontal bars per drive: category IoU (dark) and mean IoU (light); failed drives in red."""
    label_w, bar_w, row_h, top = 260, 420, 34, 50
    height = top + max(1, len(drives)) * row_h + 30
    img = np.full((height, label_w + bar_w + 90, 3), 255, np.uint8)
    _text(img, "per-drive IoU %: category (void ignored) dark, mean (void included) light", (10, 22), 0.5)
    for k in range(0, 101, 25):
        x = label_w + bar_w * k // 100
        cv2.line(img, (x, top - 6), (x, height - 24), (225, 225, 225), 1)
        _text(img, str(k), (x - 8, height - 8), 0.4, GREY)
    for i, drive in enumerate(drives):
        y = top + i * row_h
        name = drive["name"] if len(drive["name"]) <= 30 else drive["name"][:29] + "~"
        _text(img, name, (10, y + 18), 0.45, BAR_FAILED if drive["status"] == "failed" else BLACK)
        if drive["status"] == "failed":
            _text(img, f"failed: {drive['error_count']} error(s)", (label_w + 4, y + 18), 0.45, BAR_FAILED)
            continue
        if drive.get("category_iou") is None:
            _text(img, f"no ground truth ({drive['frames']} frames)", (label_w + 4, y + 18), 0.45, GREY)
            continue
        for value, color, offset in ((drive["category_iou"], BAR_CATEGORY, 2), (drive["mean_iou"], BAR_MEAN, 15)):
            if value is not None:
                cv2.rectangle(img, (label_w, y + offset), (label_w + round(bar_w * value), y + offset + 11), color, -1)
        _text(img, percent(drive["category_iou"]), (label_w + bar_w + 8, y + 13), 0.42)
    return img


def draw_throughput(timeline: list[list[float]]) -> np.ndarray:
    """Frames/s over the run (bars per time bin)."""
    plot_w, plot_h, left, top = 600, 220, 60, 40
    img = np.full((top + plot_h + 50, left + plot_w + 20, 3), 255, np.uint8)
    _text(img, "throughput: frames/s from the first frame done to the last", (10, 22), 0.5)
    cv2.rectangle(img, (left, top), (left + plot_w, top + plot_h), (200, 200, 200), 1)
    if not timeline:
        _text(img, "no frames", (left + 10, top + 30), 0.5, GREY)
        return img
    peak = max(rate for _, rate in timeline) or 1.0
    end = timeline[-1][0] or 1.0
    width = plot_w / len(timeline)
    for i, (_, rate) in enumerate(timeline):
        x0 = left + round(i * width)
        bar_h = round(plot_h * rate / peak)
        cv2.rectangle(img, (x0, top + plot_h - bar_h), (max(x0, left + round((i + 1) * width) - 1), top + plot_h),
                      BAR_CATEGORY, -1)
    _text(img, f"{peak:.1f}", (8, top + 10), 0.4, GREY)
    _text(img, "0", (left - 14, top + plot_h), 0.4, GREY)
    _text(img, "0 s", (left, top + plot_h + 18), 0.4, GREY)
    _text(img, f"{end:.1f} s", (left + plot_w - 50, top + plot_h + 18), 0.4, GREY)
    return img


# --- text ----------------------------------------------------------------------------------------


def markdown(body: dict[str, Any]) -> str:
    t, lat, cluster = body["throughput"], body["latency_ms"], body["cluster"]
    width, height = body["input_size"]
    lines = [
        f"# Fleet evaluation: {body['model_id']}",
        "",
        f"{len(body['drives'])} drives, {body['frames_done']} frames done, {body['frames']} scored against ground "
        f"truth; {body['backend']} {body['device']} {body['precision']}, input {width}x{height}, "
        f"batch {body['batch']}; "
        f"Ray {body['ray_version']} ({cluster['address']}, {cluster['nodes']} node(s), {cluster['actors']} actors x "
        f"{cluster['cpus_per_actor']:g} CPU / {cluster['gpus_per_actor']:g} GPU).",
        "",
        "## Overall (drives that did not fail)",
        "",
        "| metric | value |",
        "|---|---|",
        f"| {CATEGORY_IOU_LABEL} | {percent(body['category_iou'])} |",
        f"| {MEAN_IOU_LABEL} | {percent(body['mean_iou'])} |",
        f"| pixel accuracy | {percent(body['pixel_accuracy'])} |",
        *([f"| road IoU | {percent(body['road_iou'])} |"] if body.get("road_iou") is not None else []),
        "",
        "| category | IoU % void included | IoU % void ignored |",
        "|---|---|---|",
        *[f"| {name} | {percent(body['per_class_iou'][name])} | {percent(body['per_class_iou_void_ignored'][name])} |"
          for name in CLASS_NAMES],
        "",
        "![confusion matrix](confusion.png)",
        "",
        "## Drives",
        "",
        "| drive | kind | status | frames | scored | category IoU | mean IoU | pixel acc |",
        "|---|---|---|---|---|---|---|---|",
        *[f"| {d['name']} | {d['kind']} | {d['status']} | {d['frames']} | {d['frames_scored']} | "
          f"{percent(d.get('category_iou'))} | {percent(d.get('mean_iou'))} | {percent(d.get('pixel_accuracy'))} |"
          for d in body["drives"]],
        "",
        "![per-drive IoU](drives.png)",
        "",
    ]
    if body["failed_drives"]:
        lines += ["### Failed drives", ""]
        for failed in body["failed_drives"]:
            lines.append(f"- **{failed['name']}** (`{failed['spec']}`): {failed['error_count']} error(s)")
            lines += [f"  - `{error}`" for error in failed["errors"][:5]]
        lines.append("")
    lines += [
        "## Throughput and latency",
        "",
        f"{t['frames']} frames in {t['elapsed_s']:.1f} s: {_num(t['frames_per_s'])} frames/s overall (actor "
        f"start-up included, first frame after {_num(t['startup_s'])} s), {_num(t['steady_frames_per_s'])} "
        f"frames/s from the first frame to the last; {t['actor_processes']} actor process(es)"
        + (f", {body['duplicates']} frame(s) delivered twice by retries and counted once" if body["duplicates"] else "")
        + ".",
        "",
        "| actor | frames | busy s | frames/s while busy |",
        "|---|---|---|---|",
        *[f"| {a['actor']} | {a['frames']} | {a['busy_s']:.1f} | {_num(a['frames_per_s_busy'])} |"
          for a in t["actors"]],
        "",
        "| per frame, ms | mean | p50 | p90 | p99 | max |",
        "|---|---|---|---|---|---|",
        *[f"| {key.removesuffix('_ms')} | " + " | ".join(_num(lat[key][q]) for q in QUANTILES) + " |"
          for key in ("decode_ms", "model_ms", "score_ms", "total_ms")],
        "",
        "![throughput over time](throughput.png)",
        "",
    ]
    if body["worst_frames"]:
        lines += ["## Worst frames (lowest category IoU)", ""]
        for worst in body["worst_frames"]:
            lines.append(f"**{worst['drive']} / {worst['name']}**: category IoU {percent(worst['category_iou'])}, "
                         f"mean IoU {percent(worst['mean_iou'])}")
            lines.append("")
            if worst["panel"]:
                lines += [f"![{worst['drive']} {worst['name']}]({worst['panel']})", ""]
    return "\n".join(lines)


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def summary_text(body: dict[str, Any], out_dir: Path) -> str:
    """What ``roadseg fleet eval`` prints on stdout."""
    t, total = body["throughput"], body["latency_ms"]["total_ms"]
    lines = [
        f"roadseg fleet eval: {body['model_id']}, {len(body['drives'])} drives, {body['frames_done']} frames "
        f"({body['frames']} scored), {body['backend']} {body['device']} {body['precision']}",
        f"{CATEGORY_IOU_LABEL}: {percent(body['category_iou'])}",
        f"{MEAN_IOU_LABEL}: {percent(body['mean_iou'])}",
        f"pixel accuracy: {percent(body['pixel_accuracy'])}",
        "",
        f"{'drive':<32}{'status':>8}{'frames':>8}{'cat IoU':>9}{'mIoU':>8}",
        *[f"{d['name'][:31]:<32}{d['status']:>8}{d['frames']:>8}{percent(d.get('category_iou')):>9}"
          f"{percent(d.get('mean_iou')):>8}" for d in body["drives"]],
        "",
        f"speed: {_num(t['frames_per_s'])} frames/s overall, {_num(t['steady_frames_per_s'])} once started, "
        f"{t['actor_processes']} actor process(es); per-frame latency p50 {_num(total['p50'])} ms, "
        f"p99 {_num(total['p99'])} ms",
    ]
    for failed in body["failed_drives"]:
        lines.append(f"FAILED: {failed['name']}: {failed['errors'][0] if failed['errors'] else 'unknown error'}")
    lines.append(f"output: {out_dir} (report.md, metrics.json, frames.jsonl)")
    return "\n".join(lines)
