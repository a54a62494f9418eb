"""``roadseg models list | pull NAME | import NAME --from FILE | info NAME|PATH``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from models.store import zoo


def add_subcommand(subparsers: Any) -> None:
    models = subparsers.add_parser(
        "models", help="list, download and inspect models",
        description=f"Pretrained models are cached under ${zoo.CACHE_ENV}, else $XDG_CACHE_HOME/roadseg, "
                    "else ~/.cache/roadseg.",
    )
    models.set_defaults(verbose=False)
    sub = models.add_subparsers(dest="models_command", required=True, metavar="{list,pull,import,info}")
    sub.add_parser("list", help="built-in and downloadable models, and which are cached").set_defaults(
        handler=_list)
    pull = sub.add_parser("pull", help="download a zoo model, verify its sha256, import it into the cache")
    pull.add_argument("name", metavar="NAME")
    pull.add_argument("--url", help="download from this mirror instead (same sha256 required)")
    pull.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    pull.set_defaults(handler=_pull)
    imp = sub.add_parser("import", help="import a zoo model from a local copy of its upstream file (offline)")
    imp.add_argument("name", metavar="NAME")
    imp.add_argument("--from", dest="source", type=Path, required=True, metavar="FILE",
                     help="the upstream weight file (checked against the registry's sha256)")
    imp.set_defaults(handler=_import)
    info = sub.add_parser("info", help="print the model card (JSON) of a model name or checkpoint file")
    info.add_argument("model", metavar="NAME|PATH")
    info.set_defaults(handler=_info)


def _list(args: argparse.Namespace) -> int:
    from models.store.registry import list_models

    header = ("name", "kind", "cached", "input", "license", "description")
    rows = [header] + [
        (m.name, m.kind, "yes" if m.cached else "no", f"{m.input_size[0]}x{m.input_size[1]}", m.license, m.summary)
        for m in list_models()
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header) - 1)]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=False)) + "  " + row[-1])
    print(f"\ncache: {zoo.cache_dir()}  (set ${zoo.CACHE_ENV} to move it)")
    return 0


def _pull(args: argparse.Namespace) -> int:
    path = zoo.pull(args.name, progress=args.progress, url=args.url)
    print(f"{args.name}: {path}")
    return 0


def _import(args: argparse.Namespace) -> int:
    path = zoo.import_file(args.name, args.source)
    print(f"{args.name}: {path}")
    return 0


def _info(args: argparse.Namespace) -> int:
    from models.store.checkpoint import read_card
    from models.store.registry import checkpoint_for

    path = checkpoint_for(args.model)
    card = json.loads(read_card(path).to_json())
    print(f"# {path}", file=sys.stderr)
    print(json.dumps(card, indent=2, sort_keys=True))
    return 0
