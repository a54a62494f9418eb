"""``roadseg fleet eval`` throughput: 1 and 2 actors, against single-machine ``roadseg eval``.

    python -m benchmarks.fleet [--model dabnet-cityscapes] [--size 1024x512] [--repeat 4] [--rounds 2]

One Ray cluster for the whole run (a head on this machine with all its CPUs, real processes, as
``ray start --head`` makes it); every configuration runs the same frames (the Cityscapes val folder,
listed ``--repeat`` times as separate drives), interleaved round by round so a noisy neighbour slows
them alike, and the median of the rounds is kept:

- ``eval``: :func:`models.evaluation.evaluate.evaluate` in this process, torch with 1 thread and
  with all of them (``images_per_s``: first decode to last score, model load excluded);
- ``fleet``: 1 actor x 1 CPU, 2 actors x 1 CPU and 1 actor x all CPUs. Its rate is the steady one
  (first frame done to the last: actor start-up excluded, as eval excludes model load); start-up
  is reported apart.

Ratios: scaling = 2 actors / 1 actor (1 CPU each); per actor = fleet 1 actor / eval with the same
torch threads (goal >= 0.9). The confusion matrices of eval and fleet at the same thread count are
compared too (identical). Results: ``benchmarks/results/fleet-<machine>.json``.

On a GPU cluster (one actor per GPU; decoding on the nodes' CPUs), the same measurement is::

    python -m benchmarks.fleet --ray auto --backend tensorrt --precision fp16 --size 2048x1024 \\
        --gpu-actors 1,2,4,8
"""

from __future__ import annotations

import os

# roadseg's commands set this before torch loads OpenMP (stream.cli.main): eval is measured as it runs.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.report import machine_info, machine_name
from models.cli_args import size_arg
from models.evaluation.fleet.drives import DriveEntry, list_drives
from models.evaluation.fleet.ray_job import FleetConfig, run_fleet
from models.evaluation.fleet.report import metrics_dict

RESULTS = Path(__file__).resolve().parent / "results"
PER_ACTOR_GOAL = 0.9


def _shared() -> Path:
    return Path(os.environ.get("ROADSEG_SHARED", Path(__file__).resolve().parents[2] / "shared"))


def run_eval(model: str, root: Path, size: tuple[int, int], backend: str, precision: str, device: str,
             threads: int, repeat: int) -> dict[str, Any]:
    import torch

    from models.evaluation.evaluate import evaluate

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        frames, elapsed, confusion = 0, 0.0, None
        for _ in range(repeat):
            result = evaluate(model, root, split="val", size=size, backend=backend, device=device,
                              precision=precision, progress=False, panels=0)
            frames += result.frames
            elapsed += result.elapsed_s
            confusion = result.confusion
    finally:
        torch.set_num_threads(before)
    assert confusion is not None
    return {"kind": "eval", "threads": threads, "frames": frames, "frames_per_s": frames / elapsed,
            "confusion": confusion.tolist()}


def run_fleet_once(model: str, root: Path, size: tuple[int, int], backend: str, precision: str, device: str,
                   address: str, actors: int, cpus: float, gpus: float | None, repeat: int) -> dict[str, Any]:
    drives = list_drives([DriveEntry(f"cityscapes:{root}:val", f"val-{i}") for i in range(repeat)])
    config = FleetConfig(model=model, backend=backend, precision=precision, device=device, size=size,
                         address=address, actors=actors, cpus_per_actor=cpus, gpus_per_actor=gpus, panels=0)
    run = run_fleet(config, drives, progress=False)
    body = metrics_dict(run)
    t = body["throughput"]
    busy = [a["frames_per_s_busy"] for a in t["actors"] if a["frames_per_s_busy"]]
    return {"kind": "fleet", "actors": actors, "cpus_per_actor": cpus, "gpus_per_actor": run.plan.gpus_per_actor,
            "frames": t["frames"], "frames_per_s": t["steady_frames_per_s"], "overall_frames_per_s": t["frames_per_s"],
            "startup_s": t["startup_s"], "actor_frames_per_s_busy": busy,
            "latency_ms_p50": body["latency_ms"]["total_ms"]["p50"], "drive_confusion": body["drives"][0]["confusion"],
            "failed_drives": len(body["failed_drives"])}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.fleet", description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="dabnet-cityscapes")
    parser.add_argument("--size", type=size_arg, default=(1024, 512))
    parser.add_argument("--backend", default="torch")
    parser.add_argument("--precision", default="fp32")
    parser.add_argument("--repeat", type=int, default=4, help="the val folder listed this many times (frames)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--ray", help="an existing cluster (default: a head started here with all CPUs)")
    parser.add_argument("--gpu-actors", help="on a GPU cluster: actor counts, one GPU each (e.g. 1,2,4,8); "
                                             "skips the single-machine eval comparison on CPU threads")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    root = _shared() / "cityscapes"
    cores = os.cpu_count() or 1
    cluster = None
    address = args.ray
    if address is None:
        from ray.cluster_utils import Cluster

        os.environ.setdefault("RAY_TMPDIR", tempfile.mkdtemp(prefix="rfb-", dir="/tmp"))
        cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": cores, "include_dashboard": False,
                                                                "object_store_memory": 400 * 2**20})
        address = cluster.address
    gpu = args.gpu_actors is not None
    device = "cuda" if gpu else "cpu"
    configs: list[tuple[str, dict[str, Any]]] = []
    if gpu:
        configs += [(f"fleet {n}x1GPU", {"actors": int(n), "cpus": 1.0, "gpus": 1.0})
                    for n in args.gpu_actors.split(",")]
        configs.append((f"eval {device}", {"eval_threads": cores}))
    else:
        configs += [("eval 1 thread", {"eval_threads": 1}), (f"eval {cores} threads", {"eval_threads": cores}),
                    ("fleet 1x1CPU", {"actors": 1, "cpus": 1.0, "gpus": None}),
                    ("fleet 2x1CPU", {"actors": 2, "cpus": 1.0, "gpus": None}),
                    (f"fleet 1x{cores}CPU", {"actors": 1, "cpus": float(cores), "gpus": None})]
    samples: dict[str, list[dict[str, Any]]] = {name: [] for name, _ in configs}
    started = time.time()
    try:
        for round_number in range(args.rounds):
            for name, spec in configs:
                if "eval_threads" in spec:
                    row = run_eval(args.model, root, args.size, args.backend, args.precision, device,
                                   spec["eval_threads"], args.repeat)
                else:
                    row = run_fleet_once(args.model, root, args.size, args.backend, args.precision, device, address,
                                         spec["actors"], spec["cpus"], spec["gpus"], args.repeat)
                row["load_average_1min"] = round(os.getloadavg()[0], 2)  # other work on the machine at the end
                samples[name].append(row)
                print(f"round {round_number + 1}: {name}: {row['frames_per_s']:.2f} frames/s", file=sys.stderr,
                      flush=True)
    finally:
        if cluster is not None:
            cluster.shutdown()
    results = summarize(samples, args, cores, gpu)
    results["wall_s"] = round(time.time() - started, 1)
    out = args.out or RESULTS / f"fleet-{machine_name()}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    print(markdown(results))
    print(f"results: {out}", file=sys.stderr)
    return 0


def summarize(samples: dict[str, list[dict[str, Any]]], args: argparse.Namespace, cores: int,
              gpu: bool) -> dict[str, Any]:
    rows = []
    for name, runs in samples.items():
        rates = [r["frames_per_s"] for r in runs if r["frames_per_s"]]
        row = {"name": name, "frames_per_s": round(statistics.median(rates), 3) if rates else None,
               "rounds": [round(r, 3) for r in rates], "frames": runs[0]["frames"],
               "load_average_1min": [r.get("load_average_1min") for r in runs]}
        if runs[0]["kind"] == "fleet":
            row["startup_s"] = round(statistics.median(r["startup_s"] for r in runs), 1)
            row["latency_ms_p50"] = round(statistics.median(r["latency_ms_p50"] for r in runs), 1)
            row["actor_frames_per_s_busy"] = runs[-1]["actor_frames_per_s_busy"]
            row["failed_drives"] = max(r["failed_drives"] for r in runs)
        rows.append(row)
    by_name = {r["name"]: r for r in rows}
    ratios: dict[str, Any] = {}
    same: dict[str, bool | int] = {}
    per_actor_key = "per_actor_1cpu_over_eval_1_thread"
    if gpu:
        per_actor_key = "per_actor_1gpu_over_eval"
        one = by_name["fleet 1x1GPU"]["frames_per_s"] if "fleet 1x1GPU" in by_name else None
        evaluated = next(r["frames_per_s"] for r in rows if r["name"].startswith("eval"))
        for row in rows:
            if row["name"].startswith("fleet ") and one:
                actors = int(row["name"].split()[1].split("x")[0])
                ratios[f"scaling_{actors}_actors_over_1"] = round(row["frames_per_s"] / one, 3)
        if one and evaluated:
            ratios[per_actor_key] = round(one / evaluated, 3)
    else:
        one, two = by_name["fleet 1x1CPU"]["frames_per_s"], by_name["fleet 2x1CPU"]["frames_per_s"]
        all_cores = by_name[f"fleet 1x{cores}CPU"]["frames_per_s"]
        eval_one, eval_all = by_name["eval 1 thread"]["frames_per_s"], by_name[f"eval {cores} threads"]["frames_per_s"]
        ratios = {
            "scaling_2_actors_over_1": round(two / one, 3),
            "per_actor_1cpu_over_eval_1_thread": round(one / eval_one, 3),
            f"per_actor_{cores}cpu_over_eval_{cores}_threads": round(all_cores / eval_all, 3),
            f"fleet_2x1cpu_over_eval_{cores}_threads": round(two / eval_all, 3),
        }
        eval_cm = {1: samples["eval 1 thread"][0]["confusion"], cores: samples[f"eval {cores} threads"][0]["confusion"]}
        same = {
            "fleet_1cpu_actors_vs_eval_1_thread": all(r["drive_confusion"] == eval_cm[1]
                                                      for n in ("fleet 1x1CPU", "fleet 2x1CPU") for r in samples[n]),
            f"fleet_{cores}cpu_actor_vs_eval_{cores}_threads": all(
                r["drive_confusion"] == eval_cm[cores] for r in samples[f"fleet 1x{cores}CPU"]),
            "eval_1_thread_vs_eval_all_threads_pixels_apart": int(
                np.abs(np.array(eval_cm[1]) - np.array(eval_cm[cores])).sum()),
        }
    return {
        "machine": machine_info(), "model": args.model, "size": list(args.size), "backend": args.backend,
        "precision": args.precision, "frames_per_run": rows[0]["frames"], "rounds": args.rounds, "rows": rows,
        "ratios": ratios, "same_confusion": same,
        "targets": [{"name": "fleet per actor / eval, same threads" if not gpu else "fleet per GPU actor / eval",
                     "value": ratios.get(per_actor_key), "goal": f">= {PER_ACTOR_GOAL}",
                     "met": (ratios.get(per_actor_key) or 0) >= PER_ACTOR_GOAL}] if per_actor_key in ratios else [],
    }


def markdown(results: dict[str, Any]) -> str:
    lines = [f"{results['model']} {results['size'][0]}x{results['size'][1]}, {results['backend']} "
             f"{results['precision']}, {results['frames_per_run']} frames per run, median of {results['rounds']} "
             "rounds:", "",
             "| configuration | frames/s | rounds | actor start-up s | latency p50 ms |", "|---|---|---|---|---|"]
    for row in results["rows"]:
        lines.append(f"| {row['name']} | {row['frames_per_s']:.2f} | {', '.join(f'{r:.2f}' for r in row['rounds'])} "
                     f"| {row.get('startup_s', '-')} | {row.get('latency_ms_p50', '-')} |")
    if results["ratios"]:
        lines += ["", "| ratio | value |", "|---|---|", *[f"| {k} | {v} |" for k, v in results["ratios"].items()]]
        lines += ["", "| same confusion matrix | |", "|---|---|",
                  *[f"| {k} | {v} |" for k, v in results["same_confusion"].items()]]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
