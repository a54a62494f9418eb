"""The one contract every backend available here passes (in the style of
segmentation_models.pytorch's shared model tester): output shapes and dtype for a batch of
mixed frame sizes, pixel parity with torch fp32 on real Cityscapes frames, input errors that
name the bad image, and an idempotent close after which inference refuses to run.

Each configuration is a backend on a device in its fast precision: the CPU ones run here and in
CI; the CUDA ones (torch fp16, torch-cudagraph, ONNX Runtime fp16, TensorRT fp16) run wherever
there is a GPU (``scripts/gpu-check``) and are skipped elsewhere. Argument checking needs no
runtime at all, so every registered backend class is held to it here."""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

import models.backends.registry as registry
from models.backends.base import BackendClosed
from models.backends.common import BackendError, Device, Precision
from models.backends.registry import BACKENDS, backend_class_of, create_backend
from models.classes import NUM_CLASSES
from models.datasets.cityscapes import read_rgb
from models.store.registry import load_model
from tests.conftest import require_shared
from tests.parity import MIN_AGREEMENT, frame_agreement


@dataclass(frozen=True)
class Config:
    backend: str
    device: Device
    precision: Precision
    package: str  # what must be importable

    @property
    def id(self) -> str:
        return f"{self.backend}-{self.device}-{self.precision}"


CONFIGS = [
    Config("torch", Device.CPU, Precision.FP32, "torch"),
    Config("onnxruntime", Device.CPU, Precision.FP32, "onnxruntime"),
    Config("openvino", Device.CPU, Precision.FP32, "openvino"),
    Config("torch", Device.CUDA, Precision.FP16, "torch"),
    Config("torch-cudagraph", Device.CUDA, Precision.FP16, "torch"),
    Config("onnxruntime", Device.CUDA, Precision.FP16, "onnxruntime"),
    Config("tensorrt", Device.CUDA, Precision.FP16, "tensorrt"),
]
CI_PACKAGES = ("torch", "onnxruntime", "openvino")  # the test extra installs these: missing in CI is a failure


def _require(config: Config) -> None:
    if config.device is Device.CUDA and not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    if importlib.util.find_spec(config.package) is None:
        if os.environ.get("CI") == "true" and config.package in CI_PACKAGES:
            pytest.fail(f"{config.package} missing in CI: the test install must include it")
        pytest.skip(f"{config.package} not installed")


def _options(config: Config, model, card, cache: str) -> dict[str, object]:
    if config.backend.startswith("torch"):
        return {}
    if config.backend == "tensorrt":  # engines are built beforehand, never by the backend
        from models.export.onnx_export import export_tensorrt

        export_tensorrt(model, card, precision=str(config.precision), max_batch=4, cache=Path(cache))
    return {"cache_dir": cache}


@pytest.fixture(scope="module")
def demo():
    return load_model("demo")


@pytest.fixture(scope="module")
def street_frames():
    folder = require_shared("cityscapes/leftImg8bit/val/frankfurt")
    return [read_rgb(path) for path in sorted(folder.glob("*_leftImg8bit.png"))[:2]]


@pytest.fixture(scope="module")
def reference(demo, street_frames):
    torch_fp32 = create_backend("torch", *demo, device="cpu", precision="fp32")
    return torch_fp32.infer(street_frames).masks


@pytest.fixture(params=CONFIGS, ids=[c.id for c in CONFIGS])
def backend(request, demo, tmp_path_factory):
    config: Config = request.param
    _require(config)
    options = _options(config, *demo, str(tmp_path_factory.mktemp(config.backend)))
    made = create_backend(config.backend, *demo, device=config.device, precision=config.precision, options=options)
    assert (made.name, made.device, made.precision) == (config.backend, config.device, config.precision)
    yield made
    made.close()


def test_masks_have_each_frame_size_and_category_ids(backend):
    frames = [np.zeros((120, 200, 3), np.uint8), np.full((64, 96, 3), 200, np.uint8), np.zeros((120, 200, 3), np.uint8)]
    out = backend.infer(frames)
    assert [m.shape for m in out.masks] == [(120, 200), (64, 96), (120, 200)]
    assert all(m.dtype == np.uint8 and int(m.max()) < NUM_CLASSES for m in out.masks)
    assert out.valid == [True, True, True]
    timings = out.timings
    assert min(timings.preprocess_ms, timings.inference_ms, timings.postprocess_ms) >= 0


def test_parity_with_torch_fp32_on_real_frames(backend, street_frames, reference):
    agreement = frame_agreement(backend.infer(street_frames).masks, reference)
    assert min(agreement) >= MIN_AGREEMENT, agreement


@pytest.mark.parametrize(("image", "problem"), [
    (np.zeros((64, 64, 3), np.float32), "float32"),
    (np.zeros((64, 64), np.uint8), "(64, 64)"),
    (np.zeros((64, 64, 4), np.uint8), "(64, 64, 4)"),
])
def test_bad_image_is_named(backend, image, problem):
    with pytest.raises(ValueError, match=r"image 1") as info:
        backend.infer([np.zeros((64, 64, 3), np.uint8), image])
    assert problem in str(info.value)


def test_close_is_idempotent_and_inference_then_refuses(backend):
    backend.close()
    backend.close()
    with pytest.raises(BackendClosed):
        backend.infer([np.zeros((64, 64, 3), np.uint8)])


# --- arguments: every registered backend class, no runtime needed -------------------------------------------------


@pytest.mark.parametrize("name", sorted(BACKENDS))
@pytest.mark.parametrize(("kwargs", "message"), [
    ({"device": "tpu"}, "unknown device 'tpu' for {name}; valid: auto"),
    ({"precision": "fp64"}, "unknown precision 'fp64' for {name}; valid: auto, fp32"),
    ({"options": {"colour": "red"}}, "{name} backend: unknown options ['colour']"),
    ({"input_size": (500, 250)}, "input size 500x250: width and height must be positive multiples of"),
])
def test_bad_arguments_are_refused_before_anything_loads(name, kwargs, message, demo):
    """The shared constructor checks against what the class declares, before importing its
    runtime (onnxruntime, OpenVINO, TensorRT) or touching a GPU: the same errors everywhere."""
    backend_class = backend_class_of(name)
    with pytest.raises(BackendError) as info:
        backend_class(*demo, **kwargs)
    assert message.format(name=name) in str(info.value)


def test_declared_choices_are_typed():
    for name in BACKENDS:
        backend_class = backend_class_of(name)
        assert all(isinstance(d, Device) for d in backend_class.DEVICES), name
        assert all(isinstance(p, Precision) for p in backend_class.PRECISIONS), name
        assert Device.AUTO in backend_class.DEVICES and Precision.AUTO in backend_class.PRECISIONS, name


# --- auto ----------------------------------------------------------------------------------------------------------


def test_auto_picks_the_first_installed_backend_that_can_run(demo, tmp_path, monkeypatch):
    order = registry.AUTO_ORDER[Device.CPU]
    assert order[-1] == "torch"  # always installed: auto never fails on a CPU for lack of a runtime
    monkeypatch.setenv("ROADSEG_CACHE", str(tmp_path))
    made = create_backend("auto", *demo, device="cpu", precision="fp32")
    try:
        installed = [n for n in order if importlib.util.find_spec(CONFIG_PACKAGES[n]) is not None]
        assert made.name == installed[0] and made.precision == Precision.FP32
    finally:
        made.close()


def test_auto_skips_a_backend_that_cannot_run_and_lists_reasons_when_none_can(demo, monkeypatch):
    monkeypatch.setitem(registry.AUTO_ORDER, Device.CPU, ("tensorrt", "torch"))
    made = create_backend("auto", *demo, device="cpu", precision="fp32")
    assert made.name == "torch"  # tensorrt refused device cpu
    monkeypatch.setitem(registry.AUTO_ORDER, Device.CPU, ("tensorrt", "torch-cudagraph"))
    with pytest.raises(BackendError, match=r"backend auto: no backend can run this here; tensorrt: unknown device "
                                           r"'cpu'.*; torch-cudagraph: unknown device 'cpu'"):
        create_backend("auto", *demo, device="cpu", precision="fp32")


def test_auto_takes_no_options(demo):
    with pytest.raises(BackendError, match="backend auto takes no options"):
        create_backend("auto", *demo, device="cpu", options={"threads": 1})


CONFIG_PACKAGES = {c.backend: c.package for c in CONFIGS}
