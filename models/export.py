"""ONNX export (``roadseg export``): a roadseg model as one self-contained ONNX graph.

Two graph layouts share one exported network (``graph=``):

``"model"`` (the default; what :mod:`models.tensorrt_build` builds engines from)
    input ``images``: uint8 RGB NHWC at the model resolution, dynamic batch;
    output ``logits``: float32 NCHW category scores at the model resolution.
    Channel order and normalisation (the card's :class:`~models.checkpoint.InputSpec`)
    run in the graph, so the host sends 1 byte per pixel. The consumer resizes
    frames to the model size and upsamples the logits to each frame's size itself.

``"frames"`` (what the ``onnxruntime`` backend runs)
    input ``images``: uint8 RGB NHWC camera frames of any size (dynamic batch,
    height and width; one size per call); outputs ``masks``: uint8 category ids
    at the frame's own size, and ``finite``: one bool per frame (all logits finite).
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
* :class:`~models.category_head.CategoryFold` is built by the wrapper, always in
  fp32: one shared max, one ``exp``, a 1x1 convolution with the 0/1 membership
  matrix, ``log``. Scores of a category whose members all lie more than ~87
  below the pixel's best class are clipped there instead of going lower (it can
  never win, before or after upsampling); in the frames graph void gets that
  floor too instead of exactly ``NEVER_LOGIT``.
* ``PRelu`` becomes ``slope*x + (1-slope)*Relu(x)`` (two per-channel scales and
  an add; equal up to one rounding): ONNX Runtime's CPU ``PRelu`` kernel is a
  slow broadcast that also forces layout reorders around every use.

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
import os
import re
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch and onnx are imported where used: `roadseg --help` stays fast
    import numpy as np
    import onnx
    import torch
    from torch import nn

    from models.checkpoint import ModelCard

log = logging.getLogger(__name__)

# Bump when the graph this module writes changes: cached exports of another version are re-made.
EXPORT_VERSION = "1"
OPSET = 18  # Resize(antialias=1) and Resize(axes=) need 18
MAX_OPSET = 20  # the TorchScript exporter's newest
GRAPHS = ("model", "frames")
PRECISIONS = ("fp32", "fp16")
IMAGES = "images"
LOGITS = "logits"
MASKS = "masks"
FINITE = "finite"
EXPORT_DIR = "exports"
METADATA_PREFIX = "roadseg."
_CORE_INPUT = "roadseg/normalised"  # the exported network's input and output, inside the wrapper graph
_CORE_OUTPUT = "roadseg/logits"
_P = "roadseg/"  # prefix of every name the wrapper adds (the network's own names never start with it)
TRT_MISSING = "TensorRT is not installed; it comes from NVIDIA's package index, see README"


class ExportError(ValueError):
    """An export that cannot be done as asked; the message says why."""


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
    from models.backends.registry import model_fingerprint
    from models.zoo import cache_dir

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

    _check_choice("graph", graph, GRAPHS)
    _check_choice("precision", precision, PRECISIONS)
    if not OPSET <= opset <= MAX_OPSET:
        raise ExportError(f"opset {opset} is not supported: roadseg graphs need opset {OPSET}..{MAX_OPSET} "
                          "(antialiased Resize from 18; torch's TorchScript exporter stops at 20)")
    width, height = _input_size(card, input_size)
    core, fold = _export_network(model, (height, width), opset=opset, dynamic_batch=dynamic_batch)
    _rewrite_prelu(core.graph)
    if precision == "fp16":
        core = _to_fp16(core)
    wrapped = _wrap(core, card, (height, width), fold=fold, graph=graph, dynamic_batch=dynamic_batch, opset=opset)
    from models.backends.registry import model_fingerprint

    metadata = {
        "export_version": EXPORT_VERSION,
        "model_id": card.model_id,
        "fingerprint": model_fingerprint(model, card, (width, height)),
        "input_size": f"{width}x{height}",
        "graph": graph,
        "precision": precision,
    }
    onnx.helper.set_model_props(wrapped, {METADATA_PREFIX + key: value for key, value in metadata.items()})
    try:
        onnx.checker.check_model(wrapped, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise ExportError(f"exported graph of {card.model_id} is not valid ONNX: {exc}") from exc
    path = Path(path)
    _write_atomically(path, wrapped.SerializeToString())
    log.info("exported %s (%s graph, %s, %dx%d) to %s", card.model_id, graph, precision, width, height, path)
    return path


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
    divisor = card.input.divisor
    if width <= 0 or height <= 0 or width % divisor or height % divisor:
        raise ExportError(f"input size {width}x{height} must be positive multiples of {divisor} for {card.model_id}")
    return int(width), int(height)


def _check_choice(what: str, value: str, valid: tuple[str, ...]) -> None:
    if value not in valid:
        raise ExportError(f"unknown {what} {value!r}; valid: {', '.join(valid)}")


def _write_atomically(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as file:
            file.write(data)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


# --- the network: TorchScript export of an export-friendly copy ---------------------------------------------------


def _export_network(model: nn.Module, hw: tuple[int, int], *, opset: int,
                    dynamic_batch: bool) -> tuple[onnx.ModelProto, np.ndarray | None]:
    """float32 NCHW normalised input -> scores, as exported by torch (batch 2 traced, so that
    nothing batch-specific is baked in). A :class:`~models.category_head.CategoryFold` on top is
    left out and its membership matrix (categories x source classes) returned instead: the
    wrapper computes the fold (see :func:`_fold_nodes`)."""
    import copy

    import onnx
    import torch

    from models.category_head import CategoryFold

    network = copy.deepcopy(model).float().cpu().eval()
    members = None
    if isinstance(network, CategoryFold):
        members = network.members.cpu().numpy().astype(bool)
        network = network.net
    example = torch.zeros(2 if dynamic_batch else 1, 3, *hw)
    axes = {_CORE_INPUT: {0: "batch"}, _CORE_OUTPUT: {0: "batch"}} if dynamic_batch else None
    with tempfile.TemporaryDirectory(prefix="roadseg-export-") as folder:
        path = Path(folder) / "network.onnx"
        with warnings.catch_warnings(), torch.no_grad(), _ExportableOps():
            # TracerWarnings (shape checks turned constants: the export is for one input size) and the
            # TorchScript exporter's deprecation notice are expected here.
            warnings.simplefilter("ignore")
            torch.onnx.export(
                network, (example,), str(path), dynamo=False, opset_version=opset, input_names=[_CORE_INPUT],
                output_names=[_CORE_OUTPUT], dynamic_axes=axes, do_constant_folding=True,
            )
        return onnx.load(str(path)), members


class _ExportableOps:
    """A torch function mode (thread-local, active only around the export) that routes
    ``F.adaptive_avg_pool2d`` to :func:`exportable_adaptive_avg_pool2d`."""

    def __init__(self) -> None:
        import torch.nn.functional as F
        from torch.overrides import TorchFunctionMode

        target = F.adaptive_avg_pool2d

        class Mode(TorchFunctionMode):
            def __torch_function__(self, func: Callable[..., Any], types: Any, args: Any = (),
                                   kwargs: Any = None) -> Any:
                kwargs = kwargs or {}
                if func is target and args and getattr(args[0], "ndim", 0) == 4:
                    return exportable_adaptive_avg_pool2d(*args, **kwargs)
                return func(*args, **kwargs)  # the mode is off inside this call: no recursion

        self._mode = Mode()

    def __enter__(self) -> _ExportableOps:
        self._mode.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._mode.__exit__(*exc)


def exportable_adaptive_avg_pool2d(x: torch.Tensor, output_size: Any) -> torch.Tensor:
    """``F.adaptive_avg_pool2d`` of an NCHW tensor from ops the TorchScript exporter handles at
    any ratio.

    PyTorch averages window ``[floor(i*n/m), ceil((i+1)*n/m))`` per output ``i``; the
    windows take at most two lengths, so one stride-1 average pool per length and a
    gather give exactly those means. Separable: width first, then height."""
    import torch.nn.functional as F

    if isinstance(output_size, int):
        output_size = (output_size, output_size)
    out_h, out_w = (int(x.shape[2 + i]) if size is None else int(size) for i, size in enumerate(output_size))
    if (out_h, out_w) == (1, 1):
        return F.adaptive_avg_pool2d(x, 1)  # exports as GlobalAveragePool
    return _adaptive_avg_pool_axis(_adaptive_avg_pool_axis(x, 3, out_w), 2, out_h)


def _adaptive_avg_pool_axis(x: torch.Tensor, axis: int, out: int) -> torch.Tensor:
    import torch
    import torch.nn.functional as F

    size = int(x.shape[axis])
    if out == size:
        return x
    if size % out == 0:
        kernel = (size // out, 1) if axis == 2 else (1, size // out)
        return F.avg_pool2d(x, kernel, stride=kernel)
    starts = [(i * size) // out for i in range(out)]
    ends = [((i + 1) * size + out - 1) // out for i in range(out)]
    pooled: list[torch.Tensor] = []
    offsets: dict[int, int] = {}
    offset = 0
    for length in sorted({end - start for start, end in zip(starts, ends, strict=True)}):
        kernel = (length, 1) if axis == 2 else (1, length)
        pooled.append(F.avg_pool2d(x, kernel, stride=1))
        offsets[length] = offset
        offset += size - length + 1
    stacked = torch.cat(pooled, dim=axis) if len(pooled) > 1 else pooled[0]
    index = torch.tensor([offsets[end - start] + start for start, end in zip(starts, ends, strict=True)])
    return stacked.index_select(axis, index)


# --- ONNX graph surgery -------------------------------------------------------------------------------------------


def _rewrite_prelu(graph: onnx.GraphProto) -> int:
    """``PRelu(x, s)`` with constant slopes -> ``s*x + (1-s)*Relu(x)`` (per-channel ``s``; both
    products are ``BatchNormalization`` nodes with mean 0, var 1, eps 0), or ``LeakyRelu`` for
    a scalar slope. Equal to PRelu up to one rounding for x > 0, exact for x <= 0; non-finite
    stays non-finite. ONNX Runtime's CPU ``PRelu`` is a slow broadcast kernel that also breaks
    its blocked (NCHWc) convolution layout; these ops keep it."""
    import numpy as np
    from onnx import helper, numpy_helper

    initializers = {init.name: init for init in graph.initializer}
    nodes = []
    rewritten = 0
    for node in graph.node:
        slope_init = initializers.get(node.input[1]) if node.op_type == "PRelu" else None
        if slope_init is None:
            nodes.append(node)
            continue
        slope = numpy_helper.to_array(slope_init).astype(np.float32)
        base = f"{_P}prelu{rewritten}"
        if slope.size == 1:
            nodes.append(helper.make_node("LeakyRelu", [node.input[0]], list(node.output), alpha=float(slope.flat[0]),
                                          name=f"{base}/LeakyRelu"))
            rewritten += 1
            continue
        if slope.ndim != 3 or slope.shape[1:] != (1, 1):
            nodes.append(node)  # not per channel of an NCHW tensor: keep PRelu
            continue
        channels = slope.shape[0]
        zeros, ones = np.zeros(channels, np.float32), np.ones(channels, np.float32)
        graph.initializer.extend([
            numpy_helper.from_array(slope.reshape(-1), f"{base}/slope"),
            numpy_helper.from_array((1.0 - slope).reshape(-1), f"{base}/one_minus_slope"),
            numpy_helper.from_array(zeros, f"{base}/zeros"),
            numpy_helper.from_array(ones, f"{base}/ones"),
        ])
        x = node.input[0]
        stats = [f"{base}/zeros", f"{base}/zeros", f"{base}/ones"]  # bias, mean, var: y = scale * x
        nodes.append(helper.make_node("BatchNormalization", [x, f"{base}/slope", *stats], [f"{base}/slope_x"],
                                      epsilon=0.0, name=f"{base}/ScaleAll"))
        nodes.append(helper.make_node("Relu", [x], [f"{base}/relu"], name=f"{base}/Relu"))
        nodes.append(helper.make_node("BatchNormalization", [f"{base}/relu", f"{base}/one_minus_slope", *stats],
                                      [f"{base}/rest_relu"], epsilon=0.0, name=f"{base}/ScalePositive"))
        nodes.append(helper.make_node("Add", [f"{base}/slope_x", f"{base}/rest_relu"], list(node.output),
                                      name=f"{base}/Add"))
        rewritten += 1
    del graph.node[:]
    graph.node.extend(nodes)
    return rewritten


def _to_fp16(core: onnx.ModelProto) -> onnx.ModelProto:
    from onnxruntime.transformers.float16 import convert_float_to_float16

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        half = convert_float_to_float16(core, keep_io_types=True)
    _topological_sort(half.graph)  # the converter appends its input casts at the end
    return half


def _topological_sort(graph: onnx.GraphProto) -> None:
    available = {value.name for value in graph.input} | {init.name for init in graph.initializer} | {""}
    pending = list(graph.node)
    ordered = []
    while pending:
        blocked = []
        for node in pending:
            if all(name in available for name in node.input):
                ordered.append(node)
                available.update(node.output)
            else:
                blocked.append(node)
        if len(blocked) == len(pending):
            raise ExportError(f"graph has a cycle or a missing input near node {blocked[0].name!r}")
        pending = blocked
    del graph.node[:]
    graph.node.extend(ordered)


def _wrap(core: onnx.ModelProto, card: ModelCard, hw: tuple[int, int], *, fold: np.ndarray | None, graph: str,
          dynamic_batch: bool, opset: int) -> onnx.ModelProto:
    """The network between uint8 NHWC input and the graph's outputs (see the module docstring)."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    from models.category_head import NEVER_LOGIT

    height, width = hw
    spec = card.input
    std = np.asarray(spec.std, np.float32)
    gain = (np.float32(spec.scale) / std).reshape(1, 3, 1, 1).astype(np.float32)
    bias = (-np.asarray(spec.mean, np.float32) / std).reshape(1, 3, 1, 1).astype(np.float32)
    constants: dict[str, np.ndarray] = {
        "gain": gain,
        "bias": bias,
        "bgr": np.array([2, 1, 0], np.int64),
        "model_hw": np.array([height, width], np.int64),
        "zero": np.zeros((), np.float32),
        "axes_chw": np.array([1, 2, 3], np.int64),
        "axis_c": np.array([1], np.int64),
        "zero_i": np.array([0], np.int64),
        "tiny": np.array(np.finfo(np.float32).tiny, np.float32),
        "never": np.array(NEVER_LOGIT, np.float32),
    }
    initializers = [numpy_helper.from_array(value, _P + key) for key, value in constants.items()]
    nodes = []

    def node(op: str, inputs: list[str], output: str, **attrs: Any) -> str:
        nodes.append(helper.make_node(op, inputs, [output], name=f"{output}/{op}", **attrs))
        return output

    batch: str | int = "batch" if dynamic_batch else 1
    frames = graph == "frames"
    x = node("Transpose", [IMAGES], _P + "nchw_u8", perm=[0, 3, 1, 2])  # transpose bytes, not floats
    x = node("Cast", [x], _P + "nchw", to=TensorProto.FLOAT)
    if spec.channel_order == "BGR":
        x = node("Gather", [x, _P + "bgr"], _P + "ordered", axis=1)
    if frames:
        # The torch backend's filter: bilinear, antialiased when shrinking, half-pixel centres.
        # exclude_outside=1 renormalises the filter at the image border like torch does; with the
        # default (0) the outermost output pixels differ by up to ~14 grey levels.
        x = node("Resize", [x, "", "", _P + "model_hw"], _P + "resized", mode="linear", antialias=1,
                 exclude_outside=1, coordinate_transformation_mode="half_pixel", axes=[2, 3])
    x = node("Mul", [x, _P + "gain"], _P + "scaled")
    node("Add", [x, _P + "bias"], _CORE_INPUT)
    nodes.extend(core.graph.node)
    initializers.extend(core.graph.initializer)
    logits = _CORE_OUTPUT
    if fold is not None:
        # CategoryFold, in fp32 whatever the network's precision: category score =
        # log(sum over member classes of exp(class - max)) + max, with ONE max over all classes
        # (a 1x1 conv with the 0/1 membership matrix sums), instead of a max per category. Equal
        # except that a category whose members all lie > 87 below the best class is clipped at
        # max - 87 (it cannot win). ~8 % faster on DABNet than 8 ReduceLogSumExp.
        categories, sources = fold.shape
        initializers.append(numpy_helper.from_array(np.array([sources], np.int64), _P + "sources"))
        initializers.append(numpy_helper.from_array(fold.astype(np.float32)[:, :, None, None], _P + "members"))
        out_channels = core.graph.output[0].type.tensor_type.shape.dim[1]
        if not out_channels.HasField("dim_value") or out_channels.dim_value != sources:
            logits = node("Slice", [logits, _P + "zero_i", _P + "sources", _P + "axis_c"], _P + "source_scores")
        scores = logits
        peak = node("ReduceMax", [scores, _P + "axis_c"], _P + "peak", keepdims=1)
        shifted = node("Exp", [node("Sub", [scores, peak], _P + "shifted")], _P + "exp")
        sums = node("Max", [node("Conv", [shifted, _P + "members"], _P + "sums"), _P + "tiny"], _P + "sums_floor")
        logits = node("Add", [node("Log", [sums], _P + "log_sums"), peak], _P + "folded")
        empty = ~fold.any(axis=1)
        if graph == "model" and empty.any():  # exactly NEVER_LOGIT for categories without members
            initializers.append(numpy_helper.from_array(empty.reshape(1, categories, 1, 1), _P + "empty"))
            logits = node("Where", [_P + "empty", _P + "never", logits], _P + "category_scores")
        # else: max - 87, so the argmax cannot pick them either (every category is >= that floor)
    else:
        scores = logits
    inputs = [helper.make_tensor_value_info(
        IMAGES, TensorProto.UINT8, [batch, "height", "width", 3] if frames else [batch, height, width, 3])]
    if frames:
        # finite: the network's own scores (the fold's Max would swallow a NaN)
        total = node("ReduceSum", [scores, _P + "axes_chw"], _P + "sum", keepdims=0)
        nan_if_not_finite = node("Mul", [total, _P + "zero"], _P + "sum_times_zero")  # inf*0 and nan*0 are nan
        node("Not", [node("IsNaN", [nan_if_not_finite], _P + "not_finite")], FINITE)
        frame_hw = node("Shape", [IMAGES], _P + "frame_hw", start=1, end=3)
        up = node("Resize", [logits, "", "", frame_hw], _P + "upsampled", mode="linear",
                  coordinate_transformation_mode="half_pixel", axes=[2, 3])
        node("Cast", [node("ArgMax", [up], _P + "labels", axis=1, keepdims=0)], MASKS, to=TensorProto.UINT8)
        outputs = [helper.make_tensor_value_info(MASKS, TensorProto.UINT8, [batch, "height", "width"]),
                   helper.make_tensor_value_info(FINITE, TensorProto.BOOL, [batch])]
    else:
        node("Identity", [logits], LOGITS)
        outputs = [helper.make_tensor_value_info(LOGITS, TensorProto.FLOAT, [batch, len(card.classes), height, width])]
    body = helper.make_graph(nodes, f"roadseg-{graph}", inputs, outputs, initializer=initializers)
    wrapped = helper.make_model(body, opset_imports=[helper.make_opsetid("", opset)], producer_name="roadseg")
    wrapped.ir_version = core.ir_version
    return wrapped


# --- TensorRT -----------------------------------------------------------------------------------------------------


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
    with :func:`models.tensorrt_build.build_engine`; returns the engine path."""
    from models.backends.registry import model_fingerprint
    from models.zoo import cache_dir

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
    builder = importlib.import_module("models.tensorrt_build")
    engine: Path = builder.build_engine(
        onnx_path, precision=precision, max_batch=max_batch, int8_calibration_source=calibration,
        cache_dir=cache, fingerprint=fingerprint,
    )
    return Path(engine)


# --- command line: roadseg export ---------------------------------------------------------------------------------


def _size_arg(text: str) -> tuple[int, int]:
    try:
        width, height = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT, got {text!r}") from None
    return width, height


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def add_subcommand(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "export", help="export a model to ONNX or build a TensorRT engine",
        description="ONNX: writes the graph (default into the cache, <cache>/exports/) and prints its path. "
                    "TensorRT: exports the model-resolution ONNX graph and builds the engine the tensorrt "
                    "backend looks up in the cache.")
    p.add_argument("--model", required=True, help="built-in name, zoo name, checkpoint path or smp:ARCH:ENC")
    p.add_argument("--format", required=True, choices=("onnx", "tensorrt"))
    p.add_argument("--size", type=_size_arg, metavar="WxH", help="model input size (default: the model's own)")
    p.add_argument("--out", type=Path, metavar="PATH", help="ONNX file to write (onnx only; default: the cache)")
    p.add_argument("--graph", choices=GRAPHS, default="frames",
                   help="onnx only: 'frames' = camera frames in, masks out (what the onnxruntime backend runs; "
                        "default), 'model' = model-resolution uint8 in, logits out (what TensorRT builds from)")
    p.add_argument("--precision", choices=("fp32", "fp16", "int8"),
                   help="onnx: fp32 (default) or fp16 (for CUDA); tensorrt: fp16 (default), fp32 or int8")
    p.add_argument("--calibration", metavar="SRC", help="tensorrt int8: calibration frames (a --source spec)")
    p.add_argument("--max-batch", type=_positive, default=8, metavar="N",
                   help="tensorrt: largest batch the engine takes (default 8)")
    p.add_argument("--opset", type=int, default=OPSET, help=f"onnx opset (default {OPSET})")
    p.add_argument("-v", "--verbose", action="store_true")
    p.set_defaults(handler=run_export)


def run_export(args: argparse.Namespace) -> int:
    from models.registry import load_model

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
