"""``roadseg train``: train or fine-tune a segmentation model on Cityscapes or the synthetic drive.

Examples:
    roadseg train --arch smp:unet:resnet18 --cityscapes data/cityscapes --epochs 40 --out runs/unet-r18
    roadseg train --init dabnet-cityscapes --cityscapes data/cityscapes --lr 2e-4 --out runs/dabnet-ft
    roadseg train --arch dabnet --synthetic --teacher runs/unet-r18/best.safetensors --out runs/kd
    roadseg train --out runs/unet-r18 --resume --epochs 60      # continue, with a longer schedule

Each epoch ends with validation (mean IoU and category IoU on the val split) and writes
last.safetensors, best.safetensors (by val mean IoU), state.safetensors + state.json
(resume) and train_log.jsonl into --out. Nothing is pickled; nothing is downloaded.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from models.backends.common import DEVICE_CHOICES
from models.cli_args import size_arg
from models.store.checkpoint import ModelCard, read_card
from models.store.registry import UNTRAINED_PREFIX, checkpoint_for, load_model
from models.training.config import (
    RESUME_MUST_MATCH,
    TrainConfig,
    arch_choices,
    default_crop,
    default_model_id,
    parse_arch,
)
from models.training.data import DEFAULT_WORKERS
from models.training.state import BEST_NAME, read_state_json

DEFAULT_SIZES = {"cityscapes": (1024, 512), "synthetic": (512, 256)}  # (width, height)
SYNTHETIC_STEPS_PER_EPOCH = 100  # the synthetic drive is endless: an "epoch" is a fixed step count
DEFAULT_EPOCHS = 10
DEFAULT_BATCH = 8
DEFAULT_LR = 1e-3
DEFAULT_DICE_WEIGHT = 1.0
DEFAULT_KD_WEIGHT = 0.5
DEFAULT_KD_TEMPERATURE = 2.0
DEFAULT_RUNS_DIR = Path("runs")
EXIT_INTERRUPTED = 130
# CLI options that map one to one onto TrainConfig fields (same name).
PLAIN_FIELDS = ("init", "model_id", "epochs", "steps_per_epoch", "batch", "crop", "size", "lr", "workers",
                "teacher", "kd_weight", "kd_temperature", "dice_weight", "device", "amp", "val_limit", "seed")
FLAGS = {"family": "--arch", "arguments": "--arch/--arch-args", "data": "--cityscapes/--synthetic"}



def _json_object(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object like '{{\"encoder_depth\": 3}}', got {text!r}")
    return value


def add_subcommand(subparsers: Any) -> None:
    p = subparsers.add_parser("train", help="train or fine-tune a model (Cityscapes or synthetic)",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", metavar="SPEC", help=f"architecture: {arch_choices()}")
    p.add_argument("--arch-args", type=_json_object, metavar="JSON",
                   help='extra builder arguments, e.g. \'{"encoder_depth": 3, "decoder_channels": [32, 16, 8]}\'')
    p.add_argument("--init", metavar="MODEL", help="fine-tune from this roadseg model (name or checkpoint)")
    data = p.add_mutually_exclusive_group()
    data.add_argument("--cityscapes", type=Path, metavar="ROOT", help="leftImg8bit/ + gtFine/ (train; val)")
    data.add_argument("--synthetic", action="store_true", default=None, help="the procedural drive")
    p.add_argument("--epochs", type=int, help=f"default {DEFAULT_EPOCHS}")
    p.add_argument("--steps-per-epoch", type=int, metavar="N",
                   help=f"default: one pass over the train split (synthetic: {SYNTHETIC_STEPS_PER_EPOCH})")
    p.add_argument("--batch", type=int, help=f"default {DEFAULT_BATCH}")
    p.add_argument("--size", type=size_arg, metavar="WxH", help="frame size = model input (default: --init's, "
                   "else 1024x512 cityscapes, 512x256 synthetic)")
    p.add_argument("--crop", type=size_arg, metavar="WxH", help="training crop (default: HxH of --size)")
    p.add_argument("--lr", type=float, help=f"peak learning rate (default {DEFAULT_LR:g})")
    p.add_argument("--workers", type=int, help=f"data loader processes (default {DEFAULT_WORKERS})")
    p.add_argument("--teacher", metavar="MODEL", help="distil from this roadseg model")
    p.add_argument("--kd-weight", type=float, help=f"distillation weight (default {DEFAULT_KD_WEIGHT:g})")
    p.add_argument("--kd-temperature", type=float, metavar="T",
                   help=f"distillation temperature (default {DEFAULT_KD_TEMPERATURE:g})")
    p.add_argument("--dice-weight", type=float, help=f"Dice loss weight (default {DEFAULT_DICE_WEIGHT:g})")
    p.add_argument("--model-id", help="model_id written into the checkpoints")
    p.add_argument("--out", type=Path, metavar="DIR", help=f"run folder (default {DEFAULT_RUNS_DIR}/<model id>)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out where it stopped")
    p.add_argument("--device", choices=DEVICE_CHOICES)
    p.add_argument("--amp", action=argparse.BooleanOptionalAction, help="fp16 autocast (default: on with CUDA)")
    p.add_argument("--val-limit", type=int, metavar="N", help="validate on the first N val frames")
    p.add_argument("--seed", type=int, help="seed for init, data order and augmentation (default 0)")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    p.set_defaults(handler=run_train)


def run_train(args: argparse.Namespace) -> int:
    from models.training.loop import train  # torch-heavy: only when training

    config = resolve_config(args)
    try:
        result = train(config, resume=args.resume)
    except KeyboardInterrupt:
        print(f"roadseg train: interrupted; continue with: roadseg train --out {config.out} --resume",
              file=sys.stderr)
        return EXIT_INTERRUPTED
    best = result.progress.best_mean_iou
    print(f"best val mean IoU {best:.4f} at epoch {result.progress.best_epoch}: {config.out / BEST_NAME}")
    return 0


def resolve_config(args: argparse.Namespace) -> TrainConfig:
    """Command line (+ the saved run when resuming) -> TrainConfig, with defaults filled in."""
    given = _given(args)
    if args.resume:
        if args.out is None:
            raise ValueError("--resume needs --out DIR (the run folder to continue)")
        saved = read_state_json(args.out)["config"]
        _check_resume(saved, given, args.out)
        return TrainConfig.from_json({**saved, **_as_json(given), "out": str(args.out)})
    values = _fresh_defaults(given)
    init_model_id = values.pop("init_model_id")
    out = args.out or DEFAULT_RUNS_DIR / default_model_id(TrainConfig(**values, out=Path()), init_model_id)
    return TrainConfig(**values, out=out)


def _given(args: argparse.Namespace) -> dict[str, Any]:
    given = {name: getattr(args, name) for name in PLAIN_FIELDS if getattr(args, name) is not None}
    if args.arch is not None:
        family, arguments = parse_arch(args.arch)
        given.update(family=family, arguments={**arguments, **(args.arch_args or {})})
    elif args.arch_args is not None:
        raise ValueError("--arch-args needs --arch")
    if args.cityscapes is not None:
        given.update(data="cityscapes", cityscapes=args.cityscapes)
    elif args.synthetic:
        given["data"] = "synthetic"
    return given


def _as_json(values: dict[str, Any]) -> dict[str, Any]:
    """The JSON form state.json uses (tuples as lists, paths as strings), for comparing."""
    return json.loads(json.dumps(values, default=str))


def _check_resume(saved: dict[str, Any], given: dict[str, Any], out: Path) -> None:
    for name, value in _as_json(given).items():
        if name in RESUME_MUST_MATCH and saved.get(name) != value:
            flag = FLAGS.get(name, "--" + name.replace("_", "-"))
            raise ValueError(f"--resume: {flag} differs from the run in {out}: it was {saved.get(name)!r}, "
                             f"now {value!r}; resume with the same {flag} or start a new run in another --out")


def _fresh_defaults(given: dict[str, Any]) -> dict[str, Any]:
    values = dict(given)
    init_card = _card_of(given["init"]) if "init" in given else None
    if "family" not in values:
        if init_card is None:
            raise ValueError(f"--arch or --init is required; --arch is one of: {arch_choices()}")
        values.update(family=init_card.family, arguments=init_card.arguments)
    if "data" not in values:
        raise ValueError("training data is required: --cityscapes ROOT or --synthetic")
    size = values.setdefault("size", init_card.input.size if init_card else DEFAULT_SIZES[values["data"]])
    values.setdefault("crop", default_crop(size))
    if values["data"] == "synthetic":
        values.setdefault("steps_per_epoch", SYNTHETIC_STEPS_PER_EPOCH)
    if "teacher" not in values and ("kd_weight" in values or "kd_temperature" in values):
        raise ValueError("--kd-weight and --kd-temperature need --teacher MODEL")
    defaults = {"epochs": DEFAULT_EPOCHS, "batch": DEFAULT_BATCH, "lr": DEFAULT_LR, "dice_weight": DEFAULT_DICE_WEIGHT,
                "kd_weight": DEFAULT_KD_WEIGHT, "kd_temperature": DEFAULT_KD_TEMPERATURE}
    for name, default in defaults.items():
        values.setdefault(name, default)
    values["init_model_id"] = init_card.model_id if init_card else None
    return values


def _card_of(spec: str) -> ModelCard:
    """The model card of an ``--init`` model (built-in, zoo name or path) without loading its weights."""
    if spec.startswith(UNTRAINED_PREFIX):
        return load_model(spec)[1]
    return read_card(checkpoint_for(spec))
