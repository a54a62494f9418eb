"""The drivable-road layer from the backends (issue 10): the torch backend emits it for a model whose
card lists it (``provides_road``, ``BatchOutput.road``) from one extra channel of the same forward,
with the category masks unchanged; so do ONNX Runtime and OpenVINO, from an extra output of the
frames graph. The CUDA-graph backend captures the same forward (the road margin takes no host
data, so capture can take it)."""

from __future__ import annotations

import copy
import dataclasses
import importlib.util

import numpy as np
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from models.backends.base import BatchOutput
from models.backends.common import BackendBase, cpu_has_native_bf16
from models.backends.registry import create_backend
from models.backends.torch_backend import TorchBackend
from models.backends.torch_cuda import CudaGraphBackend
from models.classes import Category, label_ids_to_road
from models.datasets.cityscapes import read_cityscapes_label_ids, read_rgb
from models.evaluation import metrics
from models.evaluation.road import RoadReference
from models.store.checkpoint import load_checkpoint
from models.store.registry import load_model
from tests.conftest import require_shared

FRAME = "frankfurt_000000_000294"
SMALL = (512, 256)  # DABNet input (width, height): cheap on a CPU
HALF = (1024, 512)  # the size the CPU benchmark runs DABNet at


@pytest.fixture(scope="module")
def dabnet(dabnet_checkpoint):
    return load_checkpoint(dabnet_checkpoint)


@pytest.fixture(scope="module")
def frame() -> np.ndarray:
    return read_rgb(require_shared(f"cityscapes/leftImg8bit/val/frankfurt/{FRAME}_leftImg8bit.png"))


@pytest.fixture(scope="module")
def road_truth(frame) -> np.ndarray:
    path = require_shared(f"cityscapes/gtFine/val/frankfurt/{FRAME}_gtFine_labelIds.png")
    return label_ids_to_road(read_cityscapes_label_ids(path, frame.shape[:2]))


def _frames(frame: np.ndarray) -> list[np.ndarray]:
    """The real frame (2048x1024), a half-size copy, and the frame again: two sizes, one repeated."""
    return [frame, np.ascontiguousarray(frame[::2, ::2]), frame]


def _category_only(model, card, precision: str = "fp32") -> TorchBackend:
    """The same model on the torch backend without the road path (its card lists no layers)."""
    backend = TorchBackend(model, dataclasses.replace(card, layers=()), device="cpu", precision=precision,
                           input_size=SMALL)
    assert not backend.provides_road
    return backend


def test_the_contract_defaults_to_no_road_layer():
    assert BackendBase.provides_road is False
    out = BatchOutput([], [], None)  # type: ignore[arg-type]
    assert out.road is None


def test_torch_emits_a_road_layer_per_frame_at_its_size_inside_flat(dabnet, frame):
    model, card = dabnet
    assert card.has_road
    backend = TorchBackend(model, card, device="cpu", precision="fp32", input_size=SMALL)
    assert backend.provides_road
    frames = _frames(frame)
    out = backend.infer(frames)
    assert out.road is not None and len(out.road) == len(frames)
    for image, mask, road in zip(frames, out.masks, out.road, strict=True):
        assert road is not None and road.dtype == np.bool_ and road.shape == image.shape[:2]
        assert not np.any(road & (mask != Category.FLAT))  # road is inside flat
        assert 0.1 < np.count_nonzero(road) / road.size < 0.6  # a street scene: road, and not everywhere
    assert np.array_equal(out.road[0], out.road[2])
    backend.close()


@pytest.mark.parametrize("precision", [
    "fp32",
    # Emulated bf16 (no avx512_bf16/amx) takes a minute here: only where the CPU runs it natively.
    pytest.param("bf16", marks=pytest.mark.skipif(not cpu_has_native_bf16(), reason="CPU without native bf16")),
])
def test_the_road_path_leaves_the_category_masks_bit_identical(dabnet, frame, precision):
    model, card = dabnet
    with_road = TorchBackend(model, card, device="cpu", precision=precision, input_size=SMALL).infer(_frames(frame))
    without = _category_only(model, card, precision).infer(_frames(frame))
    assert without.road is None
    assert with_road.valid == without.valid == [True, True, True]
    for a, b in zip(with_road.masks, without.masks, strict=True):
        assert a.dtype == b.dtype == np.uint8 and np.array_equal(a, b)


def test_the_road_layer_is_the_one_eval_derives_from_its_reference_pass(dabnet, frame):
    """The second torch pass eval runs for the other backends (RoadPreference) gives the same layer."""
    model, card = dabnet
    backend = TorchBackend(model, card, device="cpu", precision="fp32", input_size=SMALL)
    frames = _frames(frame)
    out = backend.infer(frames)
    reference = RoadReference(model, card, backend, SMALL)
    assert reference.device == "cpu" and reference.precision == "fp32"
    preferred = reference.preferred(frames)
    assert out.road is not None
    for mask, road, prefers in zip(out.masks, out.road, preferred, strict=True):
        assert np.array_equal(road, (mask == Category.FLAT) & prefers)
    reference.close()


def test_dabnet_road_layer_matches_the_ground_truth(dabnet, frame, road_truth):
    model, card = dabnet
    out = TorchBackend(model, card, device="cpu", precision="fp32", input_size=HALF).infer([frame])
    assert out.road is not None and out.road[0] is not None
    iou = metrics.road_iou(metrics.road_confusion(road_truth, out.road[0]))
    assert iou > 0.9, iou  # 0.98 measured on this frame


def test_a_model_without_road_class_gets_no_road_layer(frame):
    model, card = load_model("demo")
    assert not card.has_road
    backend = TorchBackend(model, card, device="cpu", precision="fp32", input_size=SMALL)
    assert not backend.provides_road
    out = backend.infer([frame])
    assert out.road is None and out.masks[0].shape == frame.shape[:2]


def test_a_road_card_over_a_net_without_road_class_falls_back_to_the_categories(dabnet):
    """The reference pass wraps the fold in RoadPreference under the DABNet card: no layers forward there."""
    from models.networks.category_head import RoadPreference

    model, card = dabnet
    backend = TorchBackend(RoadPreference(model), card, device="cpu", precision="fp32", input_size=SMALL)
    assert not backend.provides_road
    out = backend.infer([np.zeros((256, 512, 3), np.uint8)])
    assert out.road is None and int(out.masks[0].max()) <= 1


class _Ops(TorchDispatchMode):
    """The aten ops a piece of code runs."""

    def __init__(self) -> None:
        super().__init__()
        self.names: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.append(str(func.overloadpacket))
        return func(*args, **(kwargs or {}))


def test_the_road_forward_builds_no_tensor_from_host_data(dabnet, monkeypatch):
    """CUDA-graph capture rejects a host-to-device copy; indexing with a Python list makes one (an
    index tensor from host data, then ``aten.index``). Checked on the CPU by the ops it runs: the
    road layer's forward must run none of them (with the list index it did)."""
    from models.networks import category_head

    assert TorchBackend.ROAD_LAYER and CudaGraphBackend.ROAD_LAYER
    model = dabnet[0].eval()
    x = torch.zeros(1, 3, 64, 128)
    with torch.inference_mode(), _Ops() as ops:
        layers = model.forward_native_layers(x)
    host_made = {"aten.index", "aten.lift_fresh", "aten._to_copy", "aten.index_select"}
    assert not host_made & set(ops.names), sorted(host_made & set(ops.names))
    monkeypatch.setattr(category_head, "_SIBLINGS", list(category_head.ROAD_SIBLINGS))  # the list index
    with torch.inference_mode(), _Ops() as listed:
        reference = model.forward_native_layers(x)
    assert host_made & set(listed.names)  # the check sees the difference
    assert torch.equal(layers, reference)  # and the slice changes no value


@pytest.mark.parametrize("name", [
    pytest.param("onnxruntime", marks=pytest.mark.skipif(importlib.util.find_spec("onnxruntime") is None,
                                                         reason="onnxruntime not installed")),
    pytest.param("openvino", marks=pytest.mark.skipif(importlib.util.find_spec("openvino") is None,
                                                      reason="openvino not installed")),
])
def test_the_frames_graph_backends_emit_torchs_road_layer(dabnet, frame, tmp_path, name):
    """The frames graph computes the road layer itself (issue 10: `--backend auto` picks these on a
    CPU): it agrees with torch's, and the graph's masks are those of the same graph without it."""
    model, card = dabnet
    frames = _frames(frame)
    backend = create_backend(name, model, card, device="cpu", precision="fp32", input_size=SMALL,
                             options={"cache_dir": tmp_path})
    assert backend.provides_road
    out = backend.infer(frames)
    backend.close()
    plain = create_backend(name, model, dataclasses.replace(card, layers=()), device="cpu", precision="fp32",
                           input_size=SMALL, options={"cache_dir": tmp_path})
    assert not plain.provides_road
    without = plain.infer(frames)
    plain.close()
    assert without.road is None and out.road is not None
    assert all(np.array_equal(a, b) for a, b in zip(out.masks, without.masks, strict=True))
    torch_out = TorchBackend(model, card, device="cpu", precision="fp32", input_size=SMALL).infer(frames)
    assert torch_out.road is not None
    for image, mask, road, reference in zip(frames, out.masks, out.road, torch_out.road, strict=True):
        assert road is not None and road.dtype == np.bool_ and road.shape == image.shape[:2]
        assert not np.any(road & (mask != Category.FLAT))
        agree = np.count_nonzero(road == reference) / road.size
        assert agree >= 0.995, agree


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("name", ["torch", "torch-cudagraph"])
def test_cuda_backends_on_dabnet(dabnet, frame, name):
    """torch and torch-cudagraph on CUDA emit the road layer with the category masks of their own
    category-only forward, and agree with each other's road layer."""
    model, card = copy.deepcopy(dabnet[0]), dabnet[1]  # the module's model stays on the CPU
    frames = _frames(frame)
    backend = create_backend(name, model, card, device="cuda", precision="fp16", input_size=SMALL)
    out = backend.infer(frames)
    backend.close()
    plain_backend = create_backend(name, model, dataclasses.replace(card, layers=()), device="cuda",
                                   precision="fp16", input_size=SMALL)
    plain = plain_backend.infer(frames)
    plain_backend.close()
    assert backend.provides_road and out.road is not None and plain.road is None
    assert all(np.array_equal(a, b) for a, b in zip(out.masks, plain.masks, strict=True))
    assert all(r is not None and r.shape == f.shape[:2] for r, f in zip(out.road, frames, strict=True))
    if name == "torch-cudagraph":
        eager = TorchBackend(model, card, device="cuda", precision="fp16", input_size=SMALL).infer(frames)
        assert eager.road is not None
        for road, reference in zip(out.road, eager.road, strict=True):
            assert road is not None and np.count_nonzero(road == reference) / road.size >= 0.995
