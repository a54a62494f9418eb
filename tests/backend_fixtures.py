"""What the tests of the exported-graph backends (onnxruntime, OpenVINO) share: module-scoped fixtures (two
real Cityscapes val frames, an export cache folder, the demo model, the demo model on a given backend) and a
tiny BGR stub model.

A test module takes its own set with one line::

    frames, cache, demo, demo_backend = backend_fixtures("onnxruntime")

pytest finds fixtures by the names a test module holds, and each call defines fresh fixture functions, so
every module keeps its own module-scoped instances (and its own cache folder)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from models.backends.registry import create_backend
from models.datasets.cityscapes import read_rgb
from models.store.checkpoint import InputSpec, ModelCard
from models.store.registry import load_model
from tests.conftest import require_shared

VAL_FRAMES = ("frankfurt_000000_000294", "frankfurt_000000_001016")


def backend_fixtures(backend: str) -> tuple:
    """The fixtures ``frames``, ``cache``, ``demo`` and ``demo_backend`` (the demo model on ``backend``,
    fp32 on the CPU, exporting into ``cache``), to be bound to those names in a test module."""

    @pytest.fixture(scope="module")
    def frames() -> list[np.ndarray]:
        root = require_shared("cityscapes/leftImg8bit/val/frankfurt")
        return [read_rgb(root / f"{name}_leftImg8bit.png") for name in VAL_FRAMES]

    @pytest.fixture(scope="module")
    def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
        return tmp_path_factory.mktemp("roadseg-cache")

    @pytest.fixture(scope="module")
    def demo() -> tuple[nn.Module, ModelCard]:
        return load_model("demo")

    @pytest.fixture(scope="module")
    def demo_backend(demo, cache):
        model, card = demo
        return create_backend(backend, model, card, device="cpu", precision="fp32", options={"cache_dir": cache})

    return frames, cache, demo, demo_backend


class _Stub(nn.Module):
    """1x1 conv to 8 categories: enough to test BGR handling and the finite flag quickly."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


def bgr_stub() -> tuple[nn.Module, ModelCard]:
    """A fresh stub (eval mode; seed torch first for fixed weights) and its card: BGR input, 0..255 scale,
    per-channel mean and std, 64x32 at divisor 32. Its conv is ``model.conv``."""
    spec = InputSpec(channel_order="BGR", scale=1.0, mean=(100.0, 110.0, 120.0), std=(50.0, 60.0, 70.0),
                     size=(64, 32), divisor=32)
    return _Stub().eval(), ModelCard(model_id="stub:bgr", family="stub", arguments={}, input=spec)
