"""The ``roadseg`` command line: ``roadseg run`` and ``roadseg demo``."""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import logging
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from decision_bridge.curve import CurveServer
from models.cli_args import int_at_least, positive_float, size_arg
from stream.batcher import BatchConfig
from stream.config import DEFAULT_MAX_AGE_MS, DEFAULT_VIEWER, DEFAULT_ZMQ_ADDRESS, MASK_SCALES, PipelineConfig
from stream.delivery import DeliveryMode
from stream.sources.base import ReplayMode
from stream.sources.cameras import RtspTransport
from stream.sources.limits import DEFAULT_MAX_FRAME_SIZE, FrameLimits, OversizePolicy
from stream.sources.live import LiveOptions

log = logging.getLogger("roadseg")

EXIT_OK = 0
EXIT_RUNTIME_ERROR = 1
EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130  # the shell's convention for SIGINT
# Subcommands that live with their code: name -> (module, the one line `roadseg --help` shows).
# Only the module of the subcommand being run is imported (models.training.train alone pulls in torch,
# timm and segmentation-models-pytorch: seconds), so `roadseg --help` and `roadseg run` start fast.
PLUGIN_SUBCOMMANDS = {
    "calibrate": ("calibration.cli", "calibrate a camera: intrinsics from board images, the ground plane (camera "
                                     "files for --camera)"),
    "models": ("models.store.zoo_cli", "list, download and inspect models"),
    "eval": ("models.evaluation.evaluate", "score a model on Cityscapes ground truth (IoU, Dice, confusion)"),
    "fleet": ("models.evaluation.fleet.cli", "evaluate a model over many recorded drives on a Ray cluster"),
    "train": ("models.training.train", "train or fine-tune a model (Cityscapes or synthetic)"),
    "export": ("models.export.onnx_export", "export a model to ONNX or build a TensorRT engine"),
    "bridge": ("decision_bridge.cli", "watch the ZeroMQ masks as a planner would (echo)"),
    "segment": ("stream.segment_cli", "segment image files: masks, overlays, class fractions, IoU"),
    "watch": ("web_viewer.client", "watch a running viewer: telemetry per frame, saved frames and masks, or an "
                                   "annotated video"),
}
# The viewer token's default, read once here at start-up (keeps the token out of `ps` and shell history).
VIEWER_TOKEN_ENV = "ROADSEG_VIEWER_TOKEN"
DEMO_SOURCE = "synthetic:seed=7,size=512x256,fps=15"
DEMO_FRAMES = 900
# one minute at 15 fps: long enough to watch, short enough to end by itself



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
    from models.backends.common import DEVICE_CHOICES, PRECISION_CHOICES
    from models.backends.registry import BACKEND_CHOICES

    p.add_argument("--backend", default="torch", choices=BACKEND_CHOICES,
                   help="inference backend (default torch; auto: the fastest one installed that can run the "
                        "device and precision; onnxruntime/openvino/tensorrt need their packages)")
    p.add_argument("--device", default="auto", choices=DEVICE_CHOICES)
    p.add_argument("--precision", default="auto", choices=PRECISION_CHOICES)
    p.add_argument("--zmq", type=_zmq, default=DEFAULT_ZMQ_ADDRESS, metavar="ADDR|off",
                   help=f"ZeroMQ publish address (default {DEFAULT_ZMQ_ADDRESS})")
    p.add_argument("--zmq-mode", choices=[m.value for m in DeliveryMode], default=DeliveryMode.PUB.value,
                   help="pub: every mask, a slow subscriber loses messages alone (default); latest: the newest "
                        "mask, old ones dropped for slow subscribers, plus a single-frame form for CONFLATE; "
                        "lossless: every mask in order, the pipeline waits for the slowest subscriber")
    p.add_argument("--mask-scale", type=int, choices=MASK_SCALES, default=1, metavar="N",
                   help="publish every Nth pixel of masks and road layers (1, 2, 4, 8; default 1: full size); "
                        "IoU and the viewer keep the full mask")
    p.add_argument("--zmq-subscribers", type=int_at_least(1), default=1, metavar="N",
                   help="--zmq-wait waits for this many subscribers (default 1)")
    p.add_argument("--zmq-wait", type=float, default=0.0, metavar="SECONDS",
                   help="wait up to this long for a subscriber before the first frame")
    p.add_argument("--zmq-curve-key", metavar="SECRET_FILE",
                   help="CURVE-encrypt the masks with this server secret key file (NAME.key_secret, from "
                        "`roadseg bridge keygen NAME`); subscribers need its public NAME.key")
    p.add_argument("--zmq-curve-clients", metavar="DIR",
                   help="with --zmq-curve-key: admit only the subscribers whose public key file (*.key) is in "
                        "DIR (default: any subscriber that has the server's public key)")
    p.add_argument("--viewer", type=_viewer, default=DEFAULT_VIEWER, metavar="HOST:PORT|off",
                   help="web viewer bind address (default 127.0.0.1:8080)")
    p.add_argument("--viewer-token", metavar="TOKEN",
                   help="require this token (16+ characters: letters, digits, - . _ ~ + /) for the viewer's page, "
                        f"API and WebSocket; default ${VIEWER_TOKEN_ENV}, else none on a loopback bind and one made "
                        "and printed at start on any other")
    p.add_argument("--viewer-insecure", action="store_true",
                   help="serve a viewer bound beyond loopback without a token: anyone who can reach it can watch")
    p.add_argument("--viewer-allow-host", action="append", default=[], metavar="NAME",
                   help="a further host name the viewer answers to, e.g. a reverse proxy's (repeatable; other "
                        "Host headers are refused, against DNS rebinding)")
    p.add_argument("--realtime", action="store_true", help="replay at the recorded frame rate")
    p.add_argument("--rate", type=positive_float, metavar="FPS",
                   help="replay each source at FPS frames/s (a camera at a chosen rate)")
    p.add_argument("--max-age-ms", type=positive_float, default=DEFAULT_MAX_AGE_MS, metavar="MS",
                   help=f"staleness budget of live streams: older frames are dropped (cause 'stale'), "
                        f"later masks flagged invalid (default {DEFAULT_MAX_AGE_MS:.0f})")
    p.add_argument("--replay-mode", choices=[m.value for m in ReplayMode], default=None,
                   help="a paced replay that cannot keep up: 'lossless' keeps every frame, late; 'live' keeps "
                        "the newest on time, dropping late frames (default: lossless for run, live for demo)")
    p.add_argument("--rtsp-transport", choices=[t.value for t in RtspTransport], default=RtspTransport.TCP.value,
                   help="RTSP transport (default tcp)")
    p.add_argument("--stall-ms", type=positive_float, default=LiveOptions.stall_ms, metavar="MS",
                   help=f"a live stream with no new frame for this long is stalled and reopened "
                        f"(default {LiveOptions.stall_ms:.0f})")
    p.add_argument("--max-frame-size", type=size_arg, default=DEFAULT_MAX_FRAME_SIZE, metavar="WxH",
                   help="frames larger than this (either side) are downscaled or rejected at the source "
                        f"(default {DEFAULT_MAX_FRAME_SIZE[0]}x{DEFAULT_MAX_FRAME_SIZE[1]})")
    p.add_argument("--oversize", choices=[o.value for o in OversizePolicy], default=OversizePolicy.DOWNSCALE.value,
                   help="what happens to a frame above --max-frame-size (default downscale)")
    p.add_argument("--max-batch", type=int, default=None,
                   help="frames per inference batch across streams (default: 8 on CUDA, 1 on CPU)")
    p.add_argument("--max-wait-ms", type=float, default=4.0)
    p.add_argument("--summary-json", metavar="PATH", help="also write the summary as JSON")
    p.add_argument("--record", metavar="DIR",
                   help="write per stream DIR/<stream>/: overlay.mp4 (annotated video), masks and telemetry.jsonl "
                        "(its own queue: a slow disk drops recorded frames, counted, never live ones)")
    p.add_argument("--record-masks", choices=("png", "npz", "off"), default="png",
                   help="recorded masks: png (one palette PNG per frame, default), npz (compressed arrays, "
                        "100 frames per file) or off")
    p.add_argument("--no-record-video", dest="record_video", action="store_false",
                   help="with --record: no overlay video")
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
    run.add_argument("--camera", action="append", default=[], metavar="STREAM=FILE",
                     help="camera file of one stream (roadseg calibrate): its frames are undistorted before "
                          "inference; with a ground plane a bird's-eye grid is published (bev/STREAM) and shown")
    run.add_argument("--bev-grid", metavar="AHEADxWIDTH[@CELL]",
                     help="bird's-eye grid in metres, from the vehicle origin ahead, centred (default 40x20@0.1)")
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


def _record(args: argparse.Namespace) -> Any:
    if not args.record:
        return None
    from stream.sinks.recorder import RecordConfig

    return RecordConfig(Path(args.record), video=args.record_video, masks=args.record_masks)


def config_from_args(args: argparse.Namespace) -> PipelineConfig:
    demo = args.command == "demo"
    common: dict[str, Any] = dict(
        zmq_curve=_curve_server(args),
        viewer_security=_viewer_security(args),
        backend=args.backend, device=args.device, precision=args.precision, zmq_address=args.zmq,
        zmq_wait_subscriber_s=args.zmq_wait, zmq_subscribers=args.zmq_subscribers,
        zmq_mode=DeliveryMode(args.zmq_mode), mask_scale=args.mask_scale, viewer=args.viewer, realtime=args.realtime,
        replay_rate=args.rate,
        # No --max-batch: chosen once the backend says which device it runs on (no torch import here).
        batch=BatchConfig(max_batch=args.max_batch or 1, max_wait_ms=args.max_wait_ms),
        auto_max_batch=args.max_batch is None,
        max_age_ms=args.max_age_ms,
        # The demo is for watching: on a slow machine it keeps up by skipping frames, not by falling behind.
        replay_mode=ReplayMode(args.replay_mode or (ReplayMode.LIVE if demo else ReplayMode.LOSSLESS)),
        rtsp_transport=RtspTransport(args.rtsp_transport),
        live=LiveOptions(stall_ms=args.stall_ms),
        frame_limits=FrameLimits(args.max_frame_size[0], args.max_frame_size[1], OversizePolicy(args.oversize)),
        # The demo needs no subscriber: a taken default port must not stop it (run keeps failing clearly).
        zmq_fallback=demo and args.zmq == DEFAULT_ZMQ_ADDRESS,
        viewer_fallback=demo and args.viewer == DEFAULT_VIEWER,
        record=_record(args),
    )
    if demo:
        frames = f",frames={args.frames}" if args.frames > 0 else ""
        return PipelineConfig(sources=(f"demo={DEMO_SOURCE}{frames}",), model="demo", **_demo_geometry(), **common)
    return PipelineConfig(sources=tuple(args.source), model=args.model, input_size=args.size,
                          max_frames=args.max_frames, void_masks=tuple(args.void_mask), **_geometry(args), **common)


def _demo_geometry() -> dict[str, Any]:
    """The demo drive's own camera: its frames are already rectified, and the viewer shows the grid."""
    from stream.geometry import StreamCamera, synthetic_camera

    return {"cameras": (StreamCamera("demo", synthetic_camera(DEMO_SOURCE)),)}


def _geometry(args: argparse.Namespace) -> dict[str, Any]:
    """--camera files loaded and checked now (a CameraFileError names the file and field), --bev-grid parsed."""
    if not args.camera and args.bev_grid is None:
        return {}
    from calibration.bev import parse_grid
    from stream.geometry import parse_camera_specs

    return {"cameras": parse_camera_specs(args.camera),
            "bev_grid": None if args.bev_grid is None else parse_grid(args.bev_grid)}


def _viewer_security(args: argparse.Namespace) -> Any:
    """The viewer's ViewerSecurity, checked now (a ValueError names a bad flag), or None: defaults."""
    env_token = os.environ.get(VIEWER_TOKEN_ENV) or None
    flags = args.viewer_token is not None or args.viewer_insecure or args.viewer_allow_host
    if args.viewer is None:
        if flags:
            raise ValueError("--viewer-token, --viewer-insecure and --viewer-allow-host need the viewer "
                             "(they were given with --viewer off)")
        return None
    if not flags and env_token is None:
        return None
    if args.viewer_insecure and args.viewer_token is None and env_token is not None:
        raise ValueError(f"--viewer-insecure, but ${VIEWER_TOKEN_ENV} sets a token: unset it, or drop "
                         "--viewer-insecure")
    from web_viewer.security import ViewerSecurity

    token = args.viewer_token if args.viewer_token is not None else env_token
    return ViewerSecurity(token=token, insecure=args.viewer_insecure, allow_hosts=tuple(args.viewer_allow_host))


def _curve_server(args: argparse.Namespace) -> CurveServer | None:
    """The publisher's CURVE settings, key files read and checked now (CurveError names a bad one)."""
    if args.zmq_curve_key is None:
        if args.zmq_curve_clients is not None:
            raise ValueError("--zmq-curve-clients needs --zmq-curve-key (the server's secret key file)")
        return None
    return CurveServer(Path(args.zmq_curve_key), None if args.zmq_curve_clients is None
                       else Path(args.zmq_curve_clients))


def _backend_factory(config: PipelineConfig) -> Any:
    def make() -> Any:
        from models.backends.registry import create_backend
        from models.store.registry import load_model

        model, card = load_model(config.model)
        backend = create_backend(config.backend, model, card, device=config.device,
                                 precision=config.precision, input_size=config.input_size)
        log.info("model %s: %s backend on %s (%s)", card.model_id, backend.name, backend.device,
                 backend.precision)
        return backend

    return make


class _Signals:
    """First SIGINT/SIGTERM: ordered stop (finish the frames already read). Second: forced stop."""

    def __init__(self, pipeline: Any) -> None:
        self._pipeline = pipeline
        self.count = 0

    def __call__(self) -> None:
        self.count += 1
        if self.count == 1:
            log.info("stopping (finishing the frames already read; press Ctrl-C again to force)")
            self._pipeline.stop()
        else:
            log.warning("forced stop")
            self._pipeline.abort()


async def _run(config: PipelineConfig, summary_json: str | None) -> tuple[int, bool]:
    from stream.pipeline import Pipeline
    from stream.telemetry import format_summary

    _check_model_name(config.model)
    pipeline = Pipeline(config, _backend_factory(config))
    loop = asyncio.get_running_loop()
    signals = _Signals(pipeline)
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, signals)
    try:
        summary = await pipeline.run()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
    print(format_summary(summary), flush=True)
    if summary_json:
        with open(summary_json, "w", encoding="utf-8") as handle:
            json.dump(summary, handle, indent=2)
    return (EXIT_RUNTIME_ERROR if summary["errors"] else EXIT_OK), signals.count > 1


def _check_model_name(spec: str) -> None:
    """Fail on an unknown model or missing checkpoint before anything else starts (no torch import)."""
    from models.errors import CheckpointError
    from models.store.names import UNTRAINED_PREFIX, checkpoint_for

    if spec.startswith(UNTRAINED_PREFIX):
        return
    path = checkpoint_for(spec)
    if not path.is_file():
        raise CheckpointError(f"model {spec!r}: no such checkpoint file {path}")


def main(argv: Sequence[str] | None = None) -> int:
    # Before torch loads OpenMP: spinning worker threads turn any contention for the cores (the
    # decode thread, another process) into stalls. Measured, demo model on 2 cores: inference p99
    # 1526 -> 51 ms, 12.5 -> 19.7 frames/s; under full CPU load live latency p99 3991 -> 342 ms.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    try:
        return _main(argv)
    except KeyboardInterrupt:  # Ctrl-C before the pipeline's own handler is installed (imports)
        print("roadseg: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


def _main(argv: Sequence[str] | None) -> int:
    args = build_parser(argv).parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from decision_bridge.publisher import PublisherError
    from decision_bridge.schema import SchemaError
    from models.errors import CheckpointError, DatasetError
    from web_viewer.app import ViewerError

    try:
        handler = getattr(args, "handler", None)
        if handler is not None:
            return int(handler(args))
        config = config_from_args(args)
        code, forced = asyncio.run(_run(config, args.summary_json))
    except (DatasetError, CheckpointError, PublisherError, ViewerError, SchemaError, ValueError) as exc:
        print(f"roadseg: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    if forced:
        # A forced stop does not wait for a batch still running on the model's thread.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


if __name__ == "__main__":
    sys.exit(main())
