"""ONNX export (``roadseg export``): a roadseg model as one self-contained ONNX graph.

Two graph layouts share one exported network (``graph=``):

``"model"`` (the default; what :mod:`models.export.tensorrt_build` builds engines from)
    input ``images``: uint8 RGB NHWC at the model resolution, dynamic batch;
    output ``logits``: float32 NCHW category scores at the model resolution.
    Channel order and normalisation (the card's :class:`~models.store.checkpoint.InputSpec`)
    run in the graph, so the host sends 1 byte per pixel. The consumer resizes
    frames to the model size and upsamples the logits to each frame's size itself.

``"frames"`` (what the ``onnxruntime`` backend runs)
    input ``images``: uint8 RGB NHWC camera frames of any size (dynamic batch,
    height and width; one size per call); outputs ``masks``: uint8 category ids
    at the frame's own size, and ``finite``: one bool per frame (all logits finite);
    for a model with the drivable-road layer (card ``layers: ["road"]``, 19 Cityscapes
    classes) also ``road``: bool, the torch backend's road layer (flat, and road's logit
    beats sidewalk's, the margin upsampled like the logits).
    The graph does everything the torch backend does, in the same order and
    with the same filters: antialiased bilinear resize to the model size
    (half-pixel centres, ``Resize`` with ``antialias=1``), normalisation, the
    network, bilinear upsampling of the *logits* to the frame size, argmax. So
    resize, normalisation and argmax run on the session's device and only the
    uint8 mask comes back.

Why upsample logits in the graph instead of returning a model-resolution mask:
measured on two real Cityscapes val frames (2048x1024) with the ``demo`` model
(512x256 input), nearest-upsampling the model-resolution mask agrees with torch
fp32 on only 98.3 % of pixels (every class boundary moves by up to 2 px). The
"frames" graph reproduces torch fp32 to the pixel: on the same two frames 0 of
2,097,152 pixels differ for ``demo`` and for DABNet (1024x512 and native
2048x1024 input), 0 and 1 for ESPNetv2 (1024x512); on 960x540 video frames at
most 4 of 518,400. (``Resize`` needs ``exclude_outside=1`` for that: ONNX's
default treats the image border differently from torch and costs ~0.01 %.)
The fp16 variant (run on ONNX Runtime's CPU provider) agrees on 99.97-99.99 %.

Export-only rewrites (the eager model is never changed; each is exact or
argmax-exact, and covered by the parity tests):

* ``adaptive_avg_pool2d`` with an output size that does not divide the input
  (ESPNetv2's pyramid pooling) is exported as stride-1 average pools plus a
  gather, the exact same windows as PyTorch's (the TorchScript exporter cannot
  export it otherwise).
* :class:`~models.networks.category_head.CategoryFold` is built by the wrapper, always in
  fp32: one shared max, one ``exp``, a 1x1 convolution with the 0/1 membership
  matrix, ``log``. Scores of a category whose members all lie more than ~87
  below the pixel's best class are clipped there instead of going lower (it can
  never win, before or after upsampling); in the frames graph void gets that
  floor too instead of exactly ``NEVER_LOGIT``.
* In the frames graph (ONNX Runtime) ``PRelu`` becomes ``x + (1-slope)*Relu(-x)``
  with the two per-channel scales as depth-wise 1x1 convolutions (equal up to one
  rounding; see :func:`models.export.onnx_graph.rewrite_prelu`): ONNX Runtime's CPU
  ``PRelu`` kernel is a slow broadcast that also forces layout reorders around
  every use. The model graph keeps ``PRelu``, which TensorRT fuses natively.

The TorchScript-based exporter (``torch.onnx.export(dynamo=False)``) is used:
the dynamo exporter needs ``onnxscript``, which is not a dependency. Opset 18 is
the lowest with ``Resize(antialias=1)``.

fp16 (for CUDA): the network part is converted to fp16 with ONNX Runtime's own
converter; input, pre-processing, the category fold and everything after stay
uint8/fp32.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import re
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch and onnx are imported where used: `roadseg --help` stays fast
    from torch import nn

    from models.store.checkpoint import ModelCard

from models.atomic import write_bytes_atomically
from models.cli_args import int_at_least, size_arg
from models.errors import ArtifactError
from models.export.fingerprint import model_fingerprint
from models.export.onnx_graph import (  # noqa: F401 - names re-exported as this module's API
    FINITE,
    IMAGES,
    LOGITS,
    MASKS,
    ROAD,
    ExportError,
    export_network,
    exportable_adaptive_avg_pool2d,
    rewrite_prelu,
    to_fp16,
    wrap_network,
)

log = logging.getLogger(__name__)

# Bump when a graph this module writes changes: cached exports and TensorRT engines of another
# version are then re-made (2: the "model" graph casts its uint8 input before transposing it;
# 3: networks export logits at their own output resolution, see inference_forward; PReLU as
# depth-wise convolutions in the frames graph and kept as PRelu in the model graph; 4: frames
# graphs of models with the drivable-road layer have the road output).
EXPORT_VERSION = "4"
OPSET = 18  # Resize(antialias=1) and Resize(axes=) need 18
MAX_OPSET = 20  # the TorchScript exporter's newest
GRAPHS = ("model", "frames")
PRECISIONS = ("fp32", "fp16")
EXPORT_DIR = "exports"
METADATA_PREFIX = "roadseg."
TRT_MISSING = "TensorRT is not installed; it comes from NVIDIA's package index, see README"



# --- file names ---------------------------------------------------------------------------------------------------


def export_filename(model_id: str, fingerprint: str, input_size: tuple[int, int], *, graph: str = "frames",
                    precision: str = "fp32") -> str:
    """``<model_id>-<fingerprint>-<W>x<H>.onnx`` for the fp32 frames graph (the onnxruntime backend's);
    ``-logits`` marks the model-resolution graph, ``-fp16`` the fp16 variants."""
    _check_choice("graph", graph, GRAPHS)
    _check_choice("precision", precision, PRECISIONS)
    safe_id = re.sub(r"[^A-Za-z0-9._-]+", "_", model_id).strip("_") or "model"
    width, height = input_size
    suffix = ("-logits" if graph == "model" else "") + ("-fp16" if precision == "fp16" else "")
    return f"{safe_id}-{fingerprint}-{width}x{height}{suffix}.onnx"


def export_path(model: nn.Module, card: ModelCard, input_size: tuple[int, int] | None = None, *,
                graph: str = "frames", precision: str = "fp32", cache: Path | None = None) -> Path:
    """Where the export of this model (weights, card, input size) lives in the cache."""
    from models.store.zoo import cache_dir

    size = _input_size(card, input_size)
    name = export_filename(card.model_id, model_fingerprint(model, card, size), size, graph=graph, precision=precision)
    return (cache or cache_dir()) / EXPORT_DIR / name


# --- export -------------------------------------------------------------------------------------------------------


def export_onnx(
    model: nn.Module,
    card: ModelCard,
    path: Path | str,
    *,
    input_size: tuple[int, int] | None = None,
    opset: int = OPSET,
    dynamic_batch: bool = True,
    graph: str = "model",
    precision: str = "fp32",
) -> Path:
    """Export ``model`` wrapped as described in the module docstring, check it with
    ``onnx.checker`` and write it atomically to ``path``. ``model`` is not modified
    (a CPU fp32 copy is exported). ``dynamic_batch=False`` fixes the batch at 1."""
    import onnx

    from models.networks.category_head import road_layer_forward

    _check_choice("graph", graph, GRAPHS)
    _check_choice("precision", precision, PRECISIONS)
    if not OPSET <= opset <= MAX_OPSET:
        raise ExportError(f"opset {opset} is not supported: roadseg graphs need opset {OPSET}..{MAX_OPSET} "
                          "(antialiased Resize from 18; torch's TorchScript exporter stops at 20)")
    width, height = _input_size(card, input_size)
    core, fold = export_network(model, (height, width), opset=opset, dynamic_batch=dynamic_batch)
    if graph == "frames":
        rewrite_prelu(core.graph)
    if precision == "fp16":
        core = to_fp16(core)
    road = graph == "frames" and card.has_road and road_layer_forward(model) is not None
    wrapped = wrap_network(core, card, (height, width), fold=fold, graph=graph, dynamic_batch=dynamic_batch,
                           opset=opset, road=road)
    metadata = {
        "export_version": EXPORT_VERSION,
        "model_id": card.model_id,
        "fingerprint": model_fingerprint(model, card, (width, height)),
        "input_size": f"{width}x{height}",
        "graph": graph,
        "precision": precision,
        "layers": "road" if road else "",
    }
    onnx.helper.set_model_props(wrapped, {METADATA_PREFIX + key: value for key, value in metadata.items()})
    try:
        onnx.checker.check_model(wrapped, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise ExportError(f"exported graph of {card.model_id} is not valid ONNX: {exc}") from exc
    path = Path(path)
    write_bytes_atomically(path, wrapped.SerializeToString())
    log.info("exported %s (%s graph, %s, %dx%d) to %s", card.model_id, graph, precision, width, height, path)
    return path


def frames_graph(model: nn.Module, card: ModelCard, size: tuple[int, int], *, precision: str,
                 options: Mapping[str, object], refresh: bool = False) -> Path:
    """The frames graph a backend runs (see :func:`models.export.artifacts.backend_artifact`):
    ``options["onnx_path"]`` checked, or the cache's export, made when missing, stale or ``refresh``."""
    fingerprint = model_fingerprint(model, card, size)
    explicit = options.get("onnx_path")
    if explicit:
        path = Path(str(explicit)).expanduser()
        check_frames_file(path, card.model_id, fingerprint, size, precision)
        return path
    cache = Path(str(options["cache_dir"])).expanduser() if options.get("cache_dir") else None
    path = export_path(model, card, size, graph="frames", precision=precision, cache=cache)
    if refresh or not is_current(path, fingerprint):
        log.info("exporting %s to %s", card.model_id, path)
        export_onnx(model, card, path, input_size=size, graph="frames", precision=precision)
    return path


def check_frames_file(path: Path, model_id: str, fingerprint: str, size: tuple[int, int], precision: str) -> None:
    """ArtifactError unless ``path`` is a frames graph exported from these weights, card, size
    (width, height) and precision (its ``roadseg.*`` metadata)."""
    if not path.is_file():
        raise ArtifactError(f"ONNX file {path}: no such file")
    try:
        meta = read_metadata(path)
    except Exception as exc:  # protobuf DecodeError and friends: not an ONNX file
        raise ArtifactError(f"ONNX file {path}: cannot be read ({type(exc).__name__}: {exc})") from exc
    width, height = size
    if meta.get("graph") != "frames":
        raise ArtifactError(
            f"ONNX file {path} is not a roadseg frames graph (graph={meta.get('graph')!r}); export one with "
            f"`roadseg export --model ... --format onnx --graph frames`"
        )
    if meta.get("fingerprint") != fingerprint or meta.get("input_size") != f"{width}x{height}":
        raise ArtifactError(
            f"ONNX file {path} was exported from other weights, card or input size "
            f"({meta.get('model_id')} {meta.get('input_size')}, fingerprint {meta.get('fingerprint')}) "
            f"than {model_id} {width}x{height} (fingerprint {fingerprint})"
        )
    if meta.get("precision", "fp32") != precision:
        raise ArtifactError(f"ONNX file {path} is {meta.get('precision')}; the backend was asked for {precision}")


def is_current(path: Path, fingerprint: str) -> bool:
    """An existing export of exactly these weights/card/size, written by this version of this module."""
    if not path.is_file():
        return False
    try:
        meta = read_metadata(path)
    except Exception:  # unreadable (truncated, not ONNX): export again
        return False
    return meta.get("export_version") == EXPORT_VERSION and meta.get("fingerprint") == fingerprint


def read_metadata(path: Path | str) -> dict[str, str]:
    """The ``roadseg.*`` properties :func:`export_onnx` stored in a file (empty for foreign files)."""
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    return {p.key[len(METADATA_PREFIX):]: p.value for p in proto.metadata_props if p.key.startswith(METADATA_PREFIX)}


def _input_size(card: ModelCard, input_size: tuple[int, int] | None) -> tuple[int, int]:
    width, height = input_size or card.input.size
    problem = card.input.size_problem(width, height)
    if problem:
        raise ExportError(f"model {card.model_id}: {problem}")
    return int(width), int(height)


def _check_choice(what: str, value: str, valid: tuple[str, ...]) -> None:
    if value not in valid:
        raise ExportError(f"unknown {what} {value!r}; valid: {', '.join(valid)}")


# --- the network: TorchScript export of an export-friendly copy ---------------------------------------------------


def export_tensorrt(
    model: nn.Module,
    card: ModelCard,
    *,
    input_size: tuple[int, int] | None = None,
    precision: str = "fp16",
    max_batch: int = 8,
    calibration: str | None = None,
    cache: Path | None = None,
) -> Path:
    """Export the model-resolution graph into the cache and build (or find) its TensorRT engine
    with :func:`models.export.tensorrt_build.build_engine`; returns the engine path."""
    from models.store.zoo import cache_dir

    try:
        importlib.import_module("tensorrt")
    except ImportError:
        raise ExportError(TRT_MISSING) from None
    size = _input_size(card, input_size)
    cache = cache or cache_dir()
    fingerprint = model_fingerprint(model, card, size)
    onnx_path = export_path(model, card, size, graph="model", cache=cache)
    if not is_current(onnx_path, fingerprint):
        export_onnx(model, card, onnx_path, input_size=size, graph="model")
    builder = importlib.import_module("models.export.tensorrt_build")
    engine: Path = builder.build_engine(
        onnx_path, precision=precision, max_batch=max_batch, int8_calibration_source=calibration,
        cache_dir=cache, fingerprint=fingerprint,
    )
    return Path(engine)


# --- command line: roadseg export ---------------------------------------------------------------------------------


def add_subcommand(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "export", help="export a model to ONNX or build a TensorRT engine",
        description="ONNX: writes the graph (default into the cache, <cache>/exports/) and prints its path. "
                    "TensorRT: exports the model-resolution ONNX graph and builds the engine the tensorrt "
                    "backend looks up in the cache.")
    p.add_argument("--model", required=True, help="built-in name, zoo name, checkpoint path or smp:ARCH:ENC")
    p.add_argument("--format", required=True, choices=("onnx", "tensorrt"))
    p.add_argument("--size", type=size_arg, metavar="WxH", help="model input size (default: the model's own)")
    p.add_argument("--out", type=Path, metavar="PATH", help="ONNX file to write (onnx only; default: the cache)")
    p.add_argument("--graph", choices=GRAPHS, default="frames",
                   help="onnx only: 'frames' = camera frames in, masks out (what the onnxruntime backend runs; "
                        "default), 'model' = model-resolution uint8 in, logits out (what TensorRT builds from)")
    p.add_argument("--precision", choices=("fp32", "fp16", "int8"),
                   help="onnx: fp32 (default) or fp16 (for CUDA); tensorrt: fp16 (default), fp32 or int8")
    p.add_argument("--calibration", metavar="SRC", help="tensorrt int8: calibration frames (a --source spec)")
    p.add_argument("--max-batch", type=int_at_least(1), default=8, metavar="N",
                   help="tensorrt: largest batch the engine takes (default 8)")
    p.add_argument("--opset", type=int, default=OPSET, help=f"onnx opset (default {OPSET})")
    p.add_argument("-v", "--verbose", action="store_true")
    p.set_defaults(handler=run_export)


def run_export(args: argparse.Namespace) -> int:
    from models.store.registry import load_model

    if args.format == "tensorrt":
        if args.out is not None:
            raise ExportError("--out is for --format onnx: TensorRT engines go to the cache, where the tensorrt "
                              "backend finds them")
        try:  # before loading the model: say the one thing that matters first
            importlib.import_module("tensorrt")
        except ImportError:
            raise ExportError(TRT_MISSING) from None
        model, card = load_model(args.model)
        engine = export_tensorrt(model, card, input_size=args.size, precision=args.precision or "fp16",
                                 max_batch=args.max_batch, calibration=args.calibration)
        print(engine)
        return 0
    precision = args.precision or "fp32"
    if precision == "int8":
        raise ExportError("int8 is for --format tensorrt (ONNX exports are fp32 or fp16)")
    if args.calibration is not None:
        raise ExportError("--calibration is for --format tensorrt --precision int8")
    model, card = load_model(args.model)
    path = args.out or export_path(model, card, args.size, graph=args.graph, precision=precision)
    export_onnx(model, card, path, input_size=args.size, opset=args.opset, graph=args.graph, precision=precision)
    print(path)
    return 0
