"""The one contract every backend available here passes (in the style of
segmentation_models.pytorch's shared model tester): output shapes and dtype for a batch of
mixed frame sizes, pixel parity with torch fp32 on real Cityscapes frames, input errors that
name the bad image, and an idempotent close after which inference refuses to run."""

from __future__ import annotations

import importlib.util
import os

import numpy as np
import pytest

from models.backends.base import BackendClosed
from models.backends.registry import create_backend
from models.classes import NUM_CLASSES
from models.datasets.cityscapes import read_rgb
from models.store.registry import load_model
from tests.conftest import require_shared
from tests.parity import MIN_AGREEMENT, frame_agreement

# Backends that run on a CPU, with the package each needs (installed by the test extra in CI).
CPU_BACKENDS = {"torch": "torch", "onnxruntime": "onnxruntime", "openvino": "openvino"}


def _available(name: str) -> str:
    package = CPU_BACKENDS[name]
    if importlib.util.find_spec(package) is None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{package} missing in CI: the test install must include it")
        pytest.skip(f"{package} not installed")
    return name


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


@pytest.fixture(params=sorted(CPU_BACKENDS))
def backend(request, demo, tmp_path_factory):
    name = _available(request.param)
    options = {} if name == "torch" else {"cache_dir": str(tmp_path_factory.mktemp(name))}
    made = create_backend(name, *demo, device="cpu", precision="fp32", options=options)
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
