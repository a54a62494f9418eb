"""``roadseg fleet eval``: evaluate a model over many recorded drives on Ray (a lazy ``roadseg`` plugin).

Parsing and ``--help`` need neither Ray nor torch; running without Ray installed says to
``pip install 'roadseg[fleet]'`` (exit 2).
"""

from __future__ import annotations

import argparse
import re
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

from models.cli_args import int_at_least, positive_float, size_arg

HELP = "evaluate a model over many recorded drives on a Ray cluster"
EXIT_OK, EXIT_DRIVES_FAILED, EXIT_BAD_INPUT = 0, 1, 2


def add_subcommand(subparsers: Any) -> None:
    from models.backends.common import DEVICE_CHOICES, PRECISION_CHOICES
    from models.backends.registry import BACKEND_CHOICES
    from models.evaluation.fleet.ray_job import DEFAULT_DECODE_CPUS

    fleet = subparsers.add_parser(
        "fleet", help=HELP,
        description="Fleet replay on Ray: many recorded drives, decoded and scored on a Ray cluster (an embedded "
                    "one on this machine by default), with the numbers 'roadseg eval' gives. Needs "
                    "pip install 'roadseg[fleet]'.")
    commands = fleet.add_subparsers(dest="fleet_command", required=True, metavar="{eval}")
    p = commands.add_parser(
        "eval", help="score a model on many drives: per drive and overall IoU, confusion, frames/s, latency",
        description="Decode and segment every frame of the drives on Ray (one model per actor, GPUs where the "
                    "cluster has them), score frames that have ground truth exactly as 'roadseg eval' does, and "
                    "write metrics.json (category_iou, confusion, per drive and overall), frames.jsonl and "
                    "report.md with plots. A drive that fails is reported; the others finish. Exit 0: every "
                    "drive done; 1: some drive failed (the report is complete); 2: bad input.")
    p.add_argument("--drives", nargs="+", default=[], metavar="SPEC",
                   help="[NAME=]cityscapes:ROOT[:split[:city]] | image folder | 'glob' | image | video file")
    p.add_argument("--manifest", action="append", default=[], type=Path, metavar="FILE",
                   help="a file listing drives: JSON {\"drives\": [{\"source\": SPEC, \"name\": N, \"truth\": DIR}]} "
                        "or text, one [NAME=]SPEC per line (repeatable)")
    p.add_argument("--model", required=True, help="built-in name, zoo name, checkpoint path or smp:ARCH:ENC")
    p.add_argument("--backend", default="torch", choices=BACKEND_CHOICES,
                   help="inference engine in each actor, as 'roadseg run --backend' makes it (default torch)")
    p.add_argument("--device", default="auto", choices=DEVICE_CHOICES,
                   help="auto: the actor's GPU when it has one (--gpus-per-actor), else cpu")
    p.add_argument("--precision", default="auto", choices=PRECISION_CHOICES)
    p.add_argument("--size", type=size_arg, metavar="WxH", help="model input size (default: the model's own)")
    p.add_argument("--batch", type=int_at_least(1), default=1, metavar="N", help="frames per inference batch")
    p.add_argument("--ray", metavar="ADDRESS",
                   help="an existing cluster: auto, ray://HOST:PORT (Ray Client) or HOST:PORT (default: start Ray "
                        "on this machine for the run)")
    p.add_argument("--out", type=Path, metavar="DIR", help="results folder (default runs/fleet-<model>-<timestamp>)")
    p.add_argument("--masks", metavar="DEST",
                   help="also write each frame's category mask as a PNG to DEST/<drive>/<frame>.png: a folder, or "
                        "a URI pyarrow opens (s3://bucket/prefix, gs://..., file://...)")
    p.add_argument("--limit", type=int_at_least(1), metavar="N", help="only the first N frames of each drive")
    p.add_argument("--panels", type=int_at_least(0), default=4, metavar="N",
                   help="image|truth|prediction panels of the N worst frames (default 4)")
    p.add_argument("--actors", type=int_at_least(1), metavar="N",
                   help="model actors (default: one per GPU of the cluster, else one per --cpus-per-actor CPUs)")
    p.add_argument("--cpus-per-actor", type=positive_float, default=1.0, metavar="C",
                   help="CPUs each actor reserves, also its torch threads (default 1)")
    p.add_argument("--gpus-per-actor", type=float, metavar="G",
                   help="GPUs each actor reserves (default 1 when the cluster has GPUs and --device is not cpu, "
                        "else 0)")
    p.add_argument("--decode-cpus", type=float, default=DEFAULT_DECODE_CPUS, metavar="C",
                   help=f"CPUs each decode task reserves where the actors leave them free (default "
                        f"{DEFAULT_DECODE_CPUS:g}; else 0: decoding shares the actors' cores)")
    p.add_argument("--num-cpus", type=int_at_least(1), metavar="N",
                   help="without --ray: CPUs of the Ray instance started here (default: this machine's)")
    p.add_argument("--object-store-mb", type=int_at_least(80), metavar="MB",
                   help="without --ray: its object store size (default: Ray's)")
    p.add_argument("--road", action=argparse.BooleanOptionalAction, default=True,
                   help="also score the drivable-road layer where the backend emits it (default on)")
    p.add_argument("-v", "--verbose", action="store_true", help="Ray's and the workers' logs too")
    p.set_defaults(handler=run_fleet_eval)
    fleet.set_defaults(verbose=False)


def default_out_dir(model_spec: str, now: datetime | None = None) -> Path:
    name = Path(model_spec).stem if ("/" in model_spec or model_spec.endswith(".safetensors")) else model_spec
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-") or "model"
    return Path("runs") / f"fleet-{name}-{(now or datetime.now()).strftime('%Y%m%d-%H%M%S')}"


def config_from_args(args: argparse.Namespace) -> Any:
    from models.evaluation.fleet.ray_job import FleetConfig

    return FleetConfig(
        model=args.model, backend=args.backend, device=args.device, precision=args.precision, size=args.size,
        batch=args.batch, address=args.ray, actors=args.actors, cpus_per_actor=args.cpus_per_actor,
        gpus_per_actor=args.gpus_per_actor, decode_cpus=args.decode_cpus, masks=args.masks, panels=args.panels,
        road=args.road, num_cpus=args.num_cpus, object_store_mb=args.object_store_mb,
    )


def run_fleet_eval(args: argparse.Namespace) -> int:
    from models.errors import DatasetError
    from models.evaluation.fleet.drives import entries_from_specs, list_drives, read_manifest
    from models.evaluation.fleet.ray_job import INSTALL_HINT, FleetError, ray_installed, run_fleet
    from models.evaluation.fleet.report import summary_text, write_report

    if not ray_installed():
        print(f"roadseg: error: {INSTALL_HINT}", file=sys.stderr)
        return EXIT_BAD_INPUT
    if args.out is not None and args.out.exists() and not args.out.is_dir():
        raise ValueError(f"--out {args.out}: exists and is not a folder")
    entries = entries_from_specs(args.drives)
    for manifest in args.manifest:
        entries += read_manifest(manifest)
    if not entries:
        raise ValueError("no drives: give --drives SPEC... or --manifest FILE")
    drives = list_drives(entries, args.limit)
    if all(drive.error is not None for drive in drives):
        raise DatasetError("no drive can be read: " + "; ".join(f"{d.name}: {d.error}" for d in drives))
    try:
        run = run_fleet(config_from_args(args), drives, progress=True, verbose=args.verbose)
    except FleetError as exc:
        print(f"roadseg: error: {exc}", file=sys.stderr)
        return EXIT_DRIVES_FAILED
    out_dir = args.out or default_out_dir(args.model)
    try:
        body = write_report(run, out_dir)
    except OSError as exc:
        raise ValueError(f"cannot write the report to {out_dir}: {exc}") from exc
    print(summary_text(body, out_dir), flush=True)
    return EXIT_DRIVES_FAILED if body["failed_drives"] else EXIT_OK
