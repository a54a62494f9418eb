"""Torch bf16 on the CPU agrees with torch fp32 (the issue's bar: every backend and precision
>= 99.5 % of pixels) on real Cityscapes frames for the Cityscapes models, and on the
held-out synthetic drive for the demo model, which never saw a real street (on Cityscapes
its scores are undecided enough that the measure is about the model, not the precision).
The GPU precisions (fp16, TensorRT, CUDA graphs) have theirs in tests/test_cuda_backend.py
and tests/test_tensorrt_backend.py."""

from __future__ import annotations

import numpy as np
import pytest

from models.backends.torch_backend import TorchBackend
from models.datasets.cityscapes import read_rgb
from models.datasets.synthetic_scene import SyntheticDrive
from models.store.checkpoint import load_checkpoint
from models.store.registry import load_model
from tests.conftest import require_shared
from tests.parity import MIN_AGREEMENT, frame_agreement

VAL_FRAMES = ("frankfurt_000000_000294", "frankfurt_000000_001016")
SIZE = (1024, 512)  # the CPU benchmark size; DABNet's native 2048x1024 costs seconds a frame here


@pytest.fixture(scope="module")
def frames() -> list[np.ndarray]:
    root = require_shared("cityscapes/leftImg8bit/val/frankfurt")
    return [read_rgb(root / f"{name}_leftImg8bit.png") for name in VAL_FRAMES]


@pytest.mark.parametrize("name", ["dabnet", "espnetv2", "demo"])
def test_cpu_bf16_agrees_with_fp32(name, frames, request):
    if name == "demo":
        model, card = load_model("demo")
    else:
        model, card = load_checkpoint(request.getfixturevalue(f"{name}_checkpoint"))
    size = card.input.size if name == "demo" else SIZE
    if name == "demo":
        drive = SyntheticDrive(seed=7)  # the demo's held-out drive
        frames = [drive.render(i)[0] for i in (0, 40, 80)]
    fp32 = TorchBackend(model, card, device="cpu", precision="fp32", input_size=size).infer(frames)
    bf16 = TorchBackend(model, card, device="cpu", precision="bf16", input_size=size).infer(frames)
    assert bf16.valid == [True] * len(frames)
    agreement = frame_agreement(bf16.masks, fp32.masks)
    print(f"{name} bf16 vs fp32 agreement: {agreement}")
    assert min(agreement) >= MIN_AGREEMENT
