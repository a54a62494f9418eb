"""The ``roadseg`` command line: ``roadseg run`` and ``roadseg demo``."""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import logging
import signal
import sys
from collections.abc import Sequence
from typing import Any

from stream.batcher import BatchConfig
from stream.cli_args import positive_float, size_arg
from stream.config import DEFAULT_VIEWER, DEFAULT_ZMQ_ADDRESS, PipelineConfig

log = logging.getLogger("roadseg")

EXIT_OK = 0
EXIT_RUNTIME_ERROR = 1
EXIT_BAD_INPUT = 2
# Subcommands that live with their code: name -> (module, the one line `roadseg --help` shows).
# Only the module of the subcommand being run is imported (models.train alone pulls in torch,
# timm and segmentation-models-pytorch: seconds), so `roadseg --help` and `roadseg run` start fast.
PLUGIN_SUBCOMMANDS = {
    "models": ("models.zoo_cli", "list, download and inspect models"),
    "eval": ("models.eval", "score a model on Cityscapes ground truth (IoU, Dice, confusion)"),
    "train": ("models.train", "train or fine-tune a model (Cityscapes or synthetic)"),
    "export": ("models.export", "export a model to ONNX or build a TensorRT engine"),
}
DEMO_SOURCE = "synthetic:seed=7,size=512x256,fps=15"
DEMO_FRAMES = 900
GPU_MAX_BATCH, CPU_MAX_BATCH = 8, 1  # one minute at 15 fps: long enough to watch, short enough to end by itself



def _viewer(text: str) -> tuple[str, int] | None:
    if text == "off":
        return None
    from web_viewer.app import parse_bind

    try:
        return parse_bind(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _zmq(text: str) -> str | None:
    return None if text == "off" else text


def _add_common(p: argparse.ArgumentParser) -> None:
    from models.backends.registry import BACKENDS

    p.add_argument("--backend", default="torch", choices=tuple(BACKENDS),
                   help="inference backend (default torch; onnxruntime/tensorrt need their packages)")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16", "fp16"))
    p.add_argument("--zmq", type=_zmq, default=DEFAULT_ZMQ_ADDRESS, metavar="ADDR|off",
                   help=f"ZeroMQ publish address (default {DEFAULT_ZMQ_ADDRESS})")
    p.add_argument("--zmq-wait", type=float, default=0.0, metavar="SECONDS",
                   help="wait up to this long for a subscriber before the first frame")
    p.add_argument("--viewer", type=_viewer, default=DEFAULT_VIEWER, metavar="HOST:PORT|off",
                   help="web viewer bind address (default 127.0.0.1:8080)")
    p.add_argument("--realtime", action="store_true", help="replay at the recorded frame rate")
    p.add_argument("--rate", type=positive_float, metavar="FPS",
                   help="replay each source at FPS frames/s (a camera at a chosen rate)")
    p.add_argument("--max-batch", type=int, default=None,
                   help="frames per inference batch across streams (default: 8 on CUDA, 1 on CPU)")
    p.add_argument("--max-wait-ms", type=float, default=4.0)
    p.add_argument("--summary-json", metavar="PATH", help="also write the summary as JSON")
    p.add_argument("-v", "--verbose", action="store_true")


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The full parser for the subcommand in ``argv`` (default ``sys.argv[1:]``); the other
    plugin subcommands get a one-line placeholder, enough for ``roadseg --help``."""
    parser = argparse.ArgumentParser(prog="roadseg", description="Real-time road scene segmentation.")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="segment one or more sources")
    run.add_argument("--source", action="append", required=True, metavar="SRC",
                     help="[NAME=]synthetic:... | cityscapes:ROOT[:split[:city]] | folder | glob | video")
    run.add_argument("--model", default="demo", help="built-in name or checkpoint path")
    run.add_argument("--size", type=size_arg, metavar="WxH", help="model input size (default: model's own)")
    run.add_argument("--max-frames", type=int, metavar="N", help="stop each source after N frames")
    run.add_argument("--void-mask", action="append", default=[], metavar="STREAM=PNG",
                     help="static void region of one camera (non-zero pixels), e.g. the bonnet")
    _add_common(run)
    demo = sub.add_parser("demo", help="the built-in demo: synthetic drive, demo model, viewer on")
    demo.add_argument("--frames", type=int, default=DEMO_FRAMES,
                      help=f"frames to play (default {DEMO_FRAMES}; 0 = until Ctrl-C)")
    _add_common(demo)
    demo.set_defaults(realtime=True)
    demo.add_argument("--fast", dest="realtime", action="store_false", help="as fast as possible")
    command = _command_of(sys.argv[1:] if argv is None else argv)
    for name, (module_name, help_text) in PLUGIN_SUBCOMMANDS.items():
        if name == command:
            _add_plugin(sub, module_name)
        else:
            sub.add_parser(name, help=help_text)
    return parser


def _command_of(argv: Sequence[str]) -> str | None:
    """The subcommand named in argv: its first word that is not an option (the top level has
    no options that take a value)."""
    return next((word for word in argv if not word.startswith("-")), None)


def _add_plugin(sub: Any, module_name: str) -> None:
    """The module's ``add_subcommand(subparsers)`` registers a parser whose defaults include
    ``handler(args) -> int``."""
    importlib.import_module(module_name).add_subcommand(sub)


def _default_max_batch(device: str) -> int:
    """Batching pays on a GPU; on a CPU a batch of large frames is slower per frame than
    one frame at a time (measured: DABNet 1024x512, batch 8 at 0.5-0.9x the fps of batch 1)."""
    if device == "cpu":
        return CPU_MAX_BATCH
    import torch

    return GPU_MAX_BATCH if torch.cuda.is_available() else CPU_MAX_BATCH


def config_from_args(args: argparse.Namespace) -> PipelineConfig:
    common: dict[str, Any] = dict(
        backend=args.backend, device=args.device, precision=args.precision, zmq_address=args.zmq,
        zmq_wait_subscriber_s=args.zmq_wait, viewer=args.viewer, realtime=args.realtime,
        replay_rate=args.rate,
        batch=BatchConfig(max_batch=args.max_batch or _default_max_batch(args.device),
                          max_wait_ms=args.max_wait_ms),
    )
    if args.command == "demo":
        frames = f",frames={args.frames}" if args.frames > 0 else ""
        return PipelineConfig(sources=(f"demo={DEMO_SOURCE}{frames}",), model="demo", **common)
    return PipelineConfig(sources=tuple(args.source), model=args.model, input_size=args.size,
                          max_frames=args.max_frames, void_masks=tuple(args.void_mask), **common)


def _backend_factory(config: PipelineConfig) -> Any:
    def make() -> Any:
        from models.backends.registry import create_backend
        from models.registry import load_model

        model, card = load_model(config.model)
        backend = create_backend(config.backend, model, card, device=config.device,
                                 precision=config.precision, input_size=config.input_size)
        log.info("model %s: %s backend on %s (%s)", card.model_id, backend.name, backend.device,
                 backend.precision)
        return backend

    return make


async def _run(config: PipelineConfig, summary_json: str | None) -> int:
    from stream.pipeline import Pipeline
    from stream.telemetry import format_summary

    pipeline = Pipeline(config, _backend_factory(config))
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, pipeline.stop)
    try:
        summary = await pipeline.run()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
    print(format_summary(summary))
    if summary_json:
        with open(summary_json, "w", encoding="utf-8") as handle:
            json.dump(summary, handle, indent=2)
    return EXIT_RUNTIME_ERROR if summary["errors"] else EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser(argv).parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from decision_bridge.publisher import PublisherError
    from decision_bridge.schema import SchemaError
    from models.checkpoint import CheckpointError
    from stream.sources import SourceError
    from web_viewer.app import ViewerError

    try:
        handler = getattr(args, "handler", None)
        if handler is not None:
            return int(handler(args))
        config = config_from_args(args)
        return asyncio.run(_run(config, args.summary_json))
    except (SourceError, CheckpointError, PublisherError, ViewerError, SchemaError, ValueError) as exc:
        print(f"roadseg: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT


if __name__ == "__main__":
    sys.exit(main())
