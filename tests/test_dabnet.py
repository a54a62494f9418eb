"""DABNet: model, restricted-pickle importer, and accuracy of the real Cityscapes weights."""

from __future__ import annotations

import os
import pickle
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from models.backends.torch_backend import TorchBackend
from models.classes import NUM_CLASSES
from models.datasets.cityscapes import cityscapes_truth_for, read_cityscapes_truth, read_rgb
from models.evaluation.metrics import category_iou, confusion_matrix
from models.networks.dabnet import build_dabnet
from models.store.checkpoint import load_checkpoint
from models.store.importers.paddle_dabnet import KEY_RENAMES, UPSTREAM_SHA256, DABNetImportError, import_dabnet
from models.store.importers.restricted_pickle import PickleLoadError, UnsafePickleError, load_restricted
from tests.conftest import DABNET_WEIGHTS, require_shared

WEIGHTS = DABNET_WEIGHTS
PICKLE_PROTOCOL = 4  # what the upstream file uses
# Two val frames (one with much sky, one dense street): fp32 scores 0.910 on them,
# the same weights fed BGR instead of RGB 0.775 (sky collapses), so 0.87 separates them.
ACCURACY_FRAMES = ("frankfurt_000000_001016", "frankfurt_000000_002963")
MIN_CATEGORY_IOU = 0.87
DABNET_PARAMETERS = (750_000, 770_000)  # the paper's 0.76 M


def _paddle_layout(net: torch.nn.Module) -> dict:
    """A synthetic upstream-format dict built from a (non-folded) DABNet's state dict."""
    model = {}
    for index, (key, value) in enumerate(net.state_dict().items()):
        if key.endswith("num_batches_tracked"):
            continue
        for paddle_name, torch_name in KEY_RENAMES:
            key = key.replace(torch_name, paddle_name)
        model[key] = (f"param_{index}", value.numpy().copy())
    return {"epoch": 1, "model": model}


def _write_pickle(path: Path, obj: object) -> Path:
    path.write_bytes(pickle.dumps(obj, protocol=PICKLE_PROTOCOL))
    return path


# --- the model -----------------------------------------------------------------


def test_dabnet_outputs_categories_at_input_size() -> None:
    model = build_dabnet().eval()
    with torch.inference_mode():
        out = model(torch.zeros(1, 3, 64, 128))
    assert out.shape == (1, NUM_CLASSES, 64, 128)


def test_dabnet_rejects_size_not_multiple_of_8() -> None:
    with pytest.raises(ValueError, match="multiple of 8"):
        build_dabnet()(torch.zeros(1, 3, 60, 128))


# --- the real weights ------------------------------------------------------------


def test_imported_checkpoint_loads_with_its_card(dabnet_checkpoint: Path) -> None:
    model, card = load_checkpoint(dabnet_checkpoint)
    parameters = sum(p.numel() for p in model.parameters())
    assert DABNET_PARAMETERS[0] < parameters < DABNET_PARAMETERS[1]
    assert all(key.startswith("net.") for key in model.state_dict())
    assert (card.model_id, card.family, card.arguments) == ("dabnet-cityscapes", "dabnet", {})
    assert card.input.channel_order == "RGB" and card.input.size == (2048, 1024)
    assert card.provenance["source_sha256"] == UPSTREAM_SHA256


def test_real_weights_segment_cityscapes_val(dabnet_checkpoint: Path) -> None:
    root = require_shared("cityscapes")
    model, card = load_checkpoint(dabnet_checkpoint)
    backend = TorchBackend(model, card, device="cpu", precision="fp32")
    truth_for = cityscapes_truth_for(root, "val")
    cm = np.zeros((NUM_CLASSES, NUM_CLASSES), np.int64)
    for stem in ACCURACY_FRAMES:
        image_path = root / "leftImg8bit" / "val" / "frankfurt" / f"{stem}_leftImg8bit.png"
        image = read_rgb(image_path)
        truth_path = truth_for(image_path)
        assert truth_path is not None, f"no ground truth for {image_path}"
        truth = read_cityscapes_truth(truth_path, image.shape[:2])
        cm += confusion_matrix(truth, backend.infer([image]).masks[0])
    assert category_iou(cm) > MIN_CATEGORY_IOU


# --- the restricted unpickler ----------------------------------------------------------


class _Exploit:
    """Pickles as a call of ``callable_(*args)``: what a malicious weights file does."""

    def __init__(self, callable_: object, args: tuple) -> None:
        self.callable_, self.args = callable_, args

    def __reduce__(self) -> tuple:
        return self.callable_, self.args


def _exploits(marker: Path) -> list[tuple[str, _Exploit]]:
    command = f"echo pwned > {marker}"
    return [
        ("os.system", _Exploit(os.system, (command,))),
        ("builtins.eval", _Exploit(eval, (f"__import__('os').system({command!r})",))),
        ("subprocess.Popen", _Exploit(subprocess.Popen, (["sh", "-c", command],))),
    ]


@pytest.mark.parametrize("index", range(3))
def test_code_running_pickles_are_refused_unexecuted(tmp_path: Path, index: int) -> None:
    marker = tmp_path / "pwned"
    refused_name, exploit = _exploits(marker)[index]
    path = _write_pickle(tmp_path / "evil.params", {"epoch": 1, "model": {"w": ("w", exploit)}})
    with pytest.raises(UnsafePickleError, match=re.escape(refused_name)) as caught:
        import_dabnet(path, tmp_path / "out.safetensors")
    assert str(path) in str(caught.value)
    assert not marker.exists(), "the pickled command ran"
    assert not (tmp_path / "out.safetensors").exists()


def test_object_arrays_are_refused(tmp_path: Path) -> None:
    path = _write_pickle(tmp_path / "objects.params", np.array([1, "a"], dtype=object))
    with pytest.raises(UnsafePickleError, match="only bool/int/float"):
        load_restricted(path)


def test_truncated_file_is_a_clear_error(tmp_path: Path) -> None:
    data = require_shared(WEIGHTS).read_bytes()
    path = tmp_path / "truncated.params"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(PickleLoadError, match="truncated or corrupt"):
        import_dabnet(path, tmp_path / "out.safetensors")


def test_oversized_file_is_refused_before_reading(tmp_path: Path) -> None:
    path = _write_pickle(tmp_path / "big.params", np.zeros(1000, np.float32))
    with pytest.raises(PickleLoadError, match="over the 100-byte limit"):
        load_restricted(path, max_bytes=100)


# --- layout and shape checks of the importer ------------------------------------------


@pytest.mark.parametrize(
    "content",
    [np.zeros(3, np.float32), {"epoch": 1}, {"model": {"w": np.zeros(3, np.float32)}}],
    ids=["bare array", "no model", "no name pairs"],
)
def test_wrong_layout_is_not_dabnet(tmp_path: Path, content: object) -> None:
    path = _write_pickle(tmp_path / "other.params", content)
    with pytest.raises(DABNetImportError, match="not a DABNet Paddle checkpoint"):
        import_dabnet(path, tmp_path / "out.safetensors")


def test_wrong_class_count_names_19(tmp_path: Path) -> None:
    upstream = _paddle_layout(build_dabnet(num_classes=20, fold_to_categories=False))
    assert upstream["model"]["classifier.0.conv.weight"][1].shape[0] == 20
    path = _write_pickle(tmp_path / "twenty.params", upstream)
    with pytest.raises(DABNetImportError, match="20 outputs; expected 19 classes"):
        import_dabnet(path, tmp_path / "out.safetensors")


def test_missing_tensor_is_named(tmp_path: Path) -> None:
    upstream = _paddle_layout(build_dabnet(fold_to_categories=False))
    del upstream["model"]["bn_prelu_3.bn._mean"]
    path = _write_pickle(tmp_path / "partial.params", upstream)
    with pytest.raises(DABNetImportError, match=r"missing \[net\.bn_prelu_3\.bn\.running_mean\]"):
        import_dabnet(path, tmp_path / "out.safetensors")


def test_synthetic_upstream_file_round_trips_exactly(tmp_path: Path) -> None:
    net = build_dabnet(fold_to_categories=False)
    with torch.no_grad():  # distinct values everywhere, so a swapped tensor cannot go unnoticed
        for index, tensor in enumerate(net.state_dict().values()):
            if tensor.is_floating_point():
                tensor.copy_(torch.rand_like(tensor) + index)
    source = _write_pickle(tmp_path / "synthetic.params", _paddle_layout(net))
    card = import_dabnet(source, tmp_path / "synthetic.safetensors")
    assert card.provenance["matches_upstream_sha256"] is False
    loaded, _ = load_checkpoint(tmp_path / "synthetic.safetensors")
    for key, value in net.state_dict().items():
        assert torch.equal(loaded.state_dict()[f"net.{key}"], value), key


def test_backends_run_dabnet_at_its_own_output_stride():
    """Backends upsample once, straight to the frame size: they must get DABNet's 1/8 logits,
    and forward() (training, the reference) must stay those logits upsampled to the input."""
    import torch.nn.functional as F

    from models.networks.category_head import inference_forward

    model = build_dabnet().eval()
    x = torch.randn(1, 3, 64, 128, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        native = inference_forward(model)(x)
        full = model(x)
        net_full = model.net(x)
    assert native.shape == (1, NUM_CLASSES, 8, 16) and full.shape == (1, NUM_CLASSES, 64, 128)
    upsampled = F.interpolate(model.net.forward_native(x), size=(64, 128), mode="bilinear", align_corners=False)
    assert torch.allclose(net_full, upsampled)
    plain = torch.nn.Conv2d(3, 2, 1)
    assert inference_forward(plain) is plain  # nets without forward_native run as they are


def test_torch_backend_and_onnx_export_skip_dabnets_own_upsampling(monkeypatch, tmp_path):
    import onnx

    from models.export.onnx_export import export_onnx
    from models.store.checkpoint import InputSpec, ModelCard

    model = build_dabnet().eval()

    def full_resolution_forward(x):
        raise AssertionError("DABNet.forward (upsampled to the input) ran where forward_native belongs")

    monkeypatch.setattr(model.net, "forward", full_resolution_forward)
    card = ModelCard(model_id="dabnet-test", family="dabnet", arguments={},
                     input=InputSpec(size=(128, 64), divisor=8))
    frame = np.zeros((96, 160, 3), np.uint8)
    out = TorchBackend(model, card, device="cpu", precision="fp32").infer([frame])
    assert out.masks[0].shape == (96, 160)
    path = export_onnx(model, card, tmp_path / "d.onnx", graph="model")
    dims = onnx.load(str(path)).graph.output[0].type.tensor_type.shape.dim
    assert [d.dim_value for d in dims[2:]] == [8, 16]  # logits at 1/8; the backend upsamples once
