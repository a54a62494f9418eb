"""The ONNX graphs roadseg writes: the exported network (with export-only rewrites) and the
wrapper that adds pre-processing, the category fold, upsampling and argmax around it.
See :mod:`models.export.onnx_export` for the two graph layouts and why they look as they do."""

from __future__ import annotations

import logging
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

    from models.store.checkpoint import ModelCard

log = logging.getLogger(__name__)

IMAGES = "images"
LOGITS = "logits"
MASKS = "masks"
FINITE = "finite"
ROAD = "road"  # frames graph of a model with the drivable-road layer: (B, H, W) bool, flat and road beats sidewalk
_CORE_INPUT = "roadseg/normalised"  # the exported network's input and output, inside the wrapper graph
_CORE_OUTPUT = "roadseg/logits"
_P = "roadseg/"  # prefix of every name the wrapper adds (the network's own names never start with it)


class ExportError(ValueError):
    """An export that cannot be done as asked; the message says why."""


def export_network(model: nn.Module, hw: tuple[int, int], *, opset: int,
                    dynamic_batch: bool) -> tuple[onnx.ModelProto, np.ndarray | None]:
    """float32 NCHW normalised input -> scores, as exported by torch (batch 2 traced, so that
    nothing batch-specific is baked in). A :class:`~models.networks.category_head.CategoryFold` on top is
    left out and its membership matrix (categories x source classes) returned instead: the
    wrapper computes the fold (see :func:`_fold_nodes`)."""
    import copy

    import onnx
    import torch

    from models.networks.category_head import CategoryFold

    network = copy.deepcopy(model).float().cpu().eval()
    members = None
    if isinstance(network, CategoryFold):
        members = network.members.cpu().numpy().astype(bool)
        network = network.net
    network = _native_output(network)
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


def _native_output(net: nn.Module) -> nn.Module:
    """``net`` exporting what the torch backend runs: logits at the network's own output
    resolution (:func:`~models.networks.category_head.inference_forward`); the wrapper graph
    upsamples them once, to the frame size."""
    from torch import nn

    from models.networks.category_head import inference_forward

    class NativeOutput(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = net

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return inference_forward(self.net)(x)

    return NativeOutput()


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


def rewrite_prelu(graph: onnx.GraphProto) -> int:
    """``PRelu(x, s)`` with constant per-channel slopes -> ``x + (1-s) * Relu(-x)``, the negation
    and the scale as depth-wise 1x1 ``Conv`` nodes; ``LeakyRelu`` for a scalar slope. Exact for
    x >= 0, equal up to one rounding for x < 0; non-finite stays non-finite.

    Why: ONNX Runtime's CPU ``PRelu`` is a slow broadcast kernel that also breaks its blocked
    (NCHWc) convolution layout, and it has no PReLU to fuse into a convolution. As convolutions,
    the Relu fuses into the negation and the Add into the scale (ONNX Runtime's Conv+activation
    and Conv+Sum fusions), two passes over the tensor instead of four for
    ``s*x + (1-s)*Relu(x)`` written with BatchNormalization scales (DABNet 1024x512: ~6 % faster).
    """
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
        nodes.extend(_prelu_as_convs(graph, node.input[0], node.output[0], slope.reshape(-1), base))
        rewritten += 1
    del graph.node[:]
    graph.node.extend(nodes)
    return rewritten


def _prelu_as_convs(graph: onnx.GraphProto, x: str, out: str, slope: np.ndarray, base: str) -> list[onnx.NodeProto]:
    """``out = x + (1 - slope) * Relu(-x)`` per channel (see :func:`rewrite_prelu`)."""
    import numpy as np
    from onnx import helper, numpy_helper

    channels = slope.size
    graph.initializer.extend([
        numpy_helper.from_array(np.full((channels, 1, 1, 1), -1.0, np.float32), f"{base}/minus_one"),
        numpy_helper.from_array((1.0 - slope).reshape(channels, 1, 1, 1), f"{base}/one_minus_slope"),
    ])
    return [
        helper.make_node("Conv", [x, f"{base}/minus_one"], [f"{base}/neg"], group=channels, name=f"{base}/Negate"),
        helper.make_node("Relu", [f"{base}/neg"], [f"{base}/neg_part"], name=f"{base}/Relu"),
        helper.make_node("Conv", [f"{base}/neg_part", f"{base}/one_minus_slope"], [f"{base}/scaled"],
                         group=channels, name=f"{base}/Scale"),
        helper.make_node("Add", [f"{base}/scaled", x], [out], name=f"{base}/Add"),
    ]


def to_fp16(core: onnx.ModelProto) -> onnx.ModelProto:
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


def wrap_network(core: onnx.ModelProto, card: ModelCard, hw: tuple[int, int], *, fold: np.ndarray | None, graph: str,
          dynamic_batch: bool, opset: int, road: bool = False) -> onnx.ModelProto:
    """The network between uint8 NHWC input and the graph's outputs (see the module docstring).
    ``road`` (frames graph over the 19 Cityscapes classes only) adds the :data:`ROAD` output."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    from models.networks.category_head import NEVER_LOGIT

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
    if frames:  # ONNX Runtime: transpose bytes, a quarter of the memory traffic of floats
        x = node("Transpose", [IMAGES], _P + "nchw_u8", perm=[0, 3, 1, 2])
        x = node("Cast", [x], _P + "nchw", to=TensorProto.FLOAT)
    else:  # TensorRT takes a uint8 network input only when a cast to float consumes it directly
        x = node("Cast", [IMAGES], _P + "nhwc", to=TensorProto.FLOAT)
        x = node("Transpose", [x], _P + "nchw", perm=[0, 3, 1, 2])
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
        labels = node("ArgMax", [up], _P + "labels", axis=1, keepdims=0)
        node("Cast", [labels], MASKS, to=TensorProto.UINT8)
        outputs = [helper.make_tensor_value_info(MASKS, TensorProto.UINT8, [batch, "height", "width"]),
                   helper.make_tensor_value_info(FINITE, TensorProto.BOOL, [batch])]
        if road:
            initializers.extend(_road_constants())
            _road_nodes(node, scores, labels, frame_hw)
            outputs.append(helper.make_tensor_value_info(ROAD, TensorProto.BOOL, [batch, "height", "width"]))
    else:
        node("Identity", [logits], LOGITS)
        # The network's own output size (DABNet: 1/8 of the input); the backend upsamples.
        out_hw = [d.dim_value or d.dim_param for d in core.graph.output[0].type.tensor_type.shape.dim[2:]]
        outputs = [helper.make_tensor_value_info(LOGITS, TensorProto.FLOAT, [batch, len(card.classes), *out_hw])]
    body = helper.make_graph(nodes, f"roadseg-{graph}", inputs, outputs, initializer=initializers)
    wrapped = helper.make_model(body, opset_imports=[helper.make_opsetid("", opset)], producer_name="roadseg")
    wrapped.ir_version = core.ir_version
    return wrapped


def _road_constants() -> list[onnx.TensorProto]:
    import numpy as np
    from onnx import numpy_helper

    from models.classes import ROAD_TRAIN_ID, Category
    from models.networks.category_head import ROAD_SIBLINGS

    return [numpy_helper.from_array(np.array(value, np.int64), _P + key) for key, value in {
        "road_id": [ROAD_TRAIN_ID], "road_end": [ROAD_TRAIN_ID + 1], "siblings": list(ROAD_SIBLINGS),
        "flat": int(Category.FLAT)}.items()]


def _road_nodes(node: Callable[..., str], scores: str, labels: str, frame_hw: str) -> str:
    """The torch backend's road layer (:func:`~models.networks.category_head.split_layers`): the
    road margin ``logit[road] - max(logit[sidewalk...])`` from the source scores, upsampled like
    the categories (linear, one channel: per channel the same filter as theirs), then flat AND a
    positive margin."""
    road_score = node("Slice", [scores, _P + "road_id", _P + "road_end", _P + "axis_c"], _P + "road_score")
    siblings = node("Gather", [scores, _P + "siblings"], _P + "sibling_scores", axis=1)
    best_sibling = node("ReduceMax", [siblings, _P + "axis_c"], _P + "best_sibling", keepdims=1)
    margin = node("Sub", [road_score, best_sibling], _P + "road_margin")
    up = node("Resize", [margin, "", "", frame_hw], _P + "road_margin_up", mode="linear",
              coordinate_transformation_mode="half_pixel", axes=[2, 3])
    ahead = node("Greater", [node("Squeeze", [up, _P + "axis_c"], _P + "road_margin_hw"), _P + "zero"],
                 _P + "road_wins")
    flat = node("Equal", [labels, _P + "flat"], _P + "is_flat")
    return node("And", [flat, ahead], ROAD)


# --- TensorRT -----------------------------------------------------------------------------------------------------


