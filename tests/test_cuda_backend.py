"""The CUDA paths of the torch-family and ONNX Runtime backends, against torch fp32 on the CPU.

torch-cudagraph (CUDA graphs per batch size, padding), the torch backend's CUDA
branch (pinned host memory, non-blocking uploads, fp16) and onnxruntime's
CUDAExecutionProvider, each held to >= 99.5 % pixel agreement on real
Cityscapes frames. The error, batch-planning and capture-safety tests run
everywhere; the rest need a CUDA GPU (onnxruntime's also onnxruntime-gpu) and
are skipped, with that reason, without one.
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch

from models.backends.registry import BackendError, create_backend
from models.backends.torch_backend import TorchBackend
from models.backends.torch_cuda import CudaGraphBackend, parse_batch_sizes, plan_batches
from models.datasets.cityscapes import read_rgb
from models.networks.category_head import CategoryFold
from models.store.checkpoint import load_checkpoint
from models.store.registry import load_model
from tests.conftest import require_shared
from tests.parity import MIN_AGREEMENT, needs_gpu, pooled_agreement

# --- always ---------------------------------------------------------------------------------------------------------


def test_without_cuda_it_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    model, card = load_model("demo")
    with pytest.raises(BackendError, match="torch-cudagraph needs a CUDA GPU"):
        CudaGraphBackend(model, card)
    with pytest.raises(BackendError, match="torch-cudagraph needs a CUDA GPU"):
        create_backend("torch-cudagraph", model, card)


def test_cpu_device_is_refused_even_with_a_gpu() -> None:
    model, card = load_model("demo")
    with pytest.raises(BackendError, match=r"'cpu' for torch-cudagraph; valid: auto, cuda \(torch-cudagraph needs"):
        CudaGraphBackend(model, card, device="cpu")


def test_options_are_checked() -> None:
    model, card = load_model("demo")
    with pytest.raises(BackendError, match="unknown options"):
        CudaGraphBackend(model, card, options={"graphs": 3})
    with pytest.raises(BackendError, match="batch_sizes must be positive integers"):
        CudaGraphBackend(model, card, options={"batch_sizes": (0, 2)})
    assert parse_batch_sizes("4, 1,2,2") == (1, 2, 4)


def test_batches_are_padded_up_to_the_next_captured_size() -> None:
    assert plan_batches(3, (1, 2, 4)) == [(3, 4)]
    assert plan_batches(2, (1, 2, 4)) == [(2, 2)]
    assert plan_batches(1, (2, 4)) == [(1, 2)]
    assert plan_batches(9, (1, 2, 4)) == [(4, 4), (4, 4), (1, 1)]
    assert plan_batches(7, (8, 1, 4, 2)) == [(7, 8)]
    assert plan_batches(0, (1, 2)) == []


def test_category_fold_does_not_sync_with_the_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """DABNet and ESPNetv2 end in a CategoryFold: its forward must hold no GPU->CPU sync such as
    nonzero(), which CUDA graph capture refuses ("operation not permitted when stream is capturing")."""
    fold = CategoryFold(torch.nn.Identity())
    logits = torch.randn(2, fold.num_source_classes, 4, 6)

    def no_sync(*args, **kwargs):
        raise AssertionError("nonzero() in forward: a GPU->CPU sync, forbidden under CUDA graph capture")

    monkeypatch.setattr(torch.Tensor, "nonzero", no_sync)
    folded = fold(logits)
    assert folded.shape == (2, len(fold.members), 4, 6)
    assert torch.isfinite(folded).all()


# --- CUDA GPU -------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def val_frames() -> list[np.ndarray]:
    root = require_shared("cityscapes")
    paths = sorted((root / "leftImg8bit" / "val").glob("*/*_leftImg8bit.png"))[:3]
    assert len(paths) == 3, f"need 3 val frames under {root}"
    return [read_rgb(p) for p in paths]


@pytest.fixture(scope="module")
def demo() -> tuple:
    model, card = load_model("demo")
    return model, card, card.input.size


@pytest.fixture(scope="module")
def dabnet(dabnet_checkpoint: Path) -> tuple:
    model, card = load_checkpoint(dabnet_checkpoint)
    return model, card, card.input.size


def _reference(model, card, size, frames: list[np.ndarray]) -> list[np.ndarray]:
    """The torch backend at fp32 on the CPU (no TF32): what every backend is held to."""
    backend = TorchBackend(copy.deepcopy(model), card, device="cpu", precision="fp32", input_size=size)
    return backend.infer(frames).masks


@needs_gpu
@pytest.mark.timeout(900)
@pytest.mark.parametrize("which", ["demo", "dabnet"])
def test_agrees_with_torch_fp32_on_real_frames(which: str, request, val_frames) -> None:
    model, card, size = request.getfixturevalue(which)
    frames = val_frames[:2]
    reference = _reference(model, card, size, frames)
    backend = CudaGraphBackend(model, card, input_size=size, options={"batch_sizes": (1, 2)})
    assert backend.precision == "fp16"
    batched = backend.infer(frames)
    single = [backend.infer([frame]).masks[0] for frame in frames]
    print(
        f"{which} torch-cudagraph fp16 agreement: batch {pooled_agreement(batched.masks, reference):.5f}, "
        f"single {pooled_agreement(single, reference):.5f}"
    )
    assert all(batched.valid)
    assert pooled_agreement(batched.masks, reference) >= MIN_AGREEMENT
    assert pooled_agreement(single, reference) >= MIN_AGREEMENT


@needs_gpu
@pytest.mark.timeout(600)
def test_odd_batches_are_padded_and_the_padding_dropped(demo, val_frames) -> None:
    model, card, size = demo
    reference = _reference(model, card, size, val_frames)
    backend = CudaGraphBackend(model, card, input_size=size, options={"batch_sizes": (1, 2, 4)})
    graphs = backend._graphs
    assert sorted(graphs) == [1, 2, 4]
    before = {s: graphs[s].replays for s in graphs}
    result = backend.infer(val_frames)  # 3 frames -> the batch-4 graph, one padding row
    assert {s: graphs[s].replays - before[s] for s in graphs} == {1: 0, 2: 0, 4: 1}
    assert len(result.masks) == 3 and len(result.valid) == 3 and all(result.valid)
    assert pooled_agreement(result.masks, reference) >= MIN_AGREEMENT
    # Mixed sizes and more frames than the largest graph: 4 + 1 replays, order kept, every frame
    # (the half-size ones too) checked against its own reference.
    small = [frame[::2, ::2].copy() for frame in val_frames]
    mixed = [val_frames[0], small[1], val_frames[2], small[0], val_frames[1]]
    mixed_reference = _reference(model, card, size, mixed)
    before = {s: graphs[s].replays for s in graphs}
    result = backend.infer(mixed)
    assert {s: graphs[s].replays - before[s] for s in graphs} == {1: 1, 2: 0, 4: 1}
    assert [m.shape for m in result.masks] == [f.shape[:2] for f in mixed]
    assert all(result.valid)
    for mask, expected in zip(result.masks, mixed_reference, strict=True):
        assert pooled_agreement([mask], [expected]) >= MIN_AGREEMENT


@needs_gpu
@pytest.mark.timeout(1200)
def test_compile_mode_agrees_with_torch_fp32(demo, val_frames) -> None:
    model, card, size = demo
    reference = _reference(model, card, size, val_frames)
    backend = CudaGraphBackend(model, card, input_size=size, options={"batch_sizes": (1, 4), "compile": True})
    backend.warmup()  # records torch.compile's CUDA graphs in this thread, the one that infers
    result = backend.infer(val_frames)  # padded to 4
    agreement = pooled_agreement(result.masks, reference)
    print(f"demo torch.compile(reduce-overhead) agreement: {agreement:.5f}")
    assert all(result.valid) and len(result.masks) == len(val_frames)
    assert agreement >= MIN_AGREEMENT


@needs_gpu
@pytest.mark.timeout(900)
@pytest.mark.parametrize("which", ["demo", "dabnet"])
def test_torch_backend_on_cuda_agrees_with_torch_fp32(which: str, request, val_frames) -> None:
    """The torch backend's CUDA branch: pinned host buffers, non-blocking uploads, fp16 autocast."""
    model, card, size = request.getfixturevalue(which)
    reference = _reference(model, card, size, val_frames)
    backend = TorchBackend(copy.deepcopy(model), card, device="cuda", input_size=size)
    assert backend.precision == "fp16"
    result = backend.infer(val_frames)
    agreement = pooled_agreement(result.masks, reference)
    print(f"{which} torch cuda fp16 agreement: {agreement:.5f}")
    assert all(result.valid) and len(result.masks) == len(val_frames)
    assert agreement >= MIN_AGREEMENT


@needs_gpu
@pytest.mark.timeout(900)
@pytest.mark.parametrize("precision", ["fp16", "fp32"])
def test_onnxruntime_on_cuda_agrees_with_torch_fp32(precision: str, demo, val_frames, tmp_path) -> None:
    ort = pytest.importorskip("onnxruntime")
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip("onnxruntime has no CUDAExecutionProvider here (install onnxruntime-gpu)")
    model, card, size = demo
    reference = _reference(model, card, size, val_frames)
    backend = create_backend(
        "onnxruntime",
        model,
        card,
        device="cuda",
        precision=precision,
        input_size=size,
        options={"cache_dir": str(tmp_path)},
    )
    assert backend.device == "cuda" and backend.precision == precision
    result = backend.infer(val_frames)
    agreement = pooled_agreement(result.masks, reference)
    print(f"demo onnxruntime cuda {precision} agreement: {agreement:.5f}")
    assert all(result.valid) and len(result.masks) == len(val_frames)
    assert agreement >= MIN_AGREEMENT
