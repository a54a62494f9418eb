"""Model factory, checkpoints, torch backend, metrics."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from models.backends import TorchBackend, resolve_precision
from models.classes import (
    CLASS_NAMES,
    IGNORE,
    IGNORED_IN_EVAL,
    LABEL_ID_TO_CATEGORY,
    Category,
    label_ids_to_categories,
)
from models.evaluation.metrics import category_iou, confusion_matrix, mean_iou, per_class_iou
from models.networks.factory import ModelConfigError, build_model, build_smp
from models.store.checkpoint import (
    CheckpointError,
    InputSpec,
    ModelCard,
    load_checkpoint,
    read_card,
    save_checkpoint,
)
from models.store.registry import load_model

TINY = {"arch": "unet", "encoder": "resnet18", "encoder_depth": 3, "decoder_channels": [16, 8, 8]}


def tiny_card(**overrides: Any) -> ModelCard:
    card = ModelCard(model_id="tiny", family="smp", arguments=TINY, input=InputSpec(size=(64, 32)))
    return replace(card, **overrides)


@pytest.fixture
def tiny_checkpoint(tmp_path):
    torch.manual_seed(0)
    model = build_model("smp", TINY).eval()
    path = tmp_path / "tiny.safetensors"
    save_checkpoint(path, model, tiny_card())
    return path, model


def test_label_table_matches_cityscapes():
    assert LABEL_ID_TO_CATEGORY[7] == Category.FLAT  # road
    assert LABEL_ID_TO_CATEGORY[1] == Category.VOID  # ego vehicle
    assert LABEL_ID_TO_CATEGORY[17] == Category.OBJECT  # pole
    assert LABEL_ID_TO_CATEGORY[24] == Category.HUMAN
    assert LABEL_ID_TO_CATEGORY[33] == Category.VEHICLE  # bicycle
    assert LABEL_ID_TO_CATEGORY[200] == Category.VOID
    ids = np.array([[-1, 23], [26, 300]], np.int32)
    assert label_ids_to_categories(ids).tolist() == [[0, Category.SKY], [Category.VEHICLE, 0]]
    # ignoreInEval labels of a real category (labels.py): scored and trained by no one.
    for label_id in (9, 10, 14, 15, 16, 18, 29, 30):  # parking .. trailer
        assert LABEL_ID_TO_CATEGORY[label_id] == IGNORE, label_id
    assert set(IGNORED_IN_EVAL) == {9, 10, 14, 15, 16, 18, 29, 30}


def test_factory_errors_list_valid_choices():
    with pytest.raises(ModelConfigError, match="valid: unet"):
        build_smp("unetx", "resnet18")
    with pytest.raises(ModelConfigError, match="resnet18"):
        build_smp("unet", "resnet-nope")
    with pytest.raises(ModelConfigError, match="valid: smp"):
        build_model("nope", {})


def test_checkpoint_round_trip(tiny_checkpoint):
    path, model = tiny_checkpoint
    loaded, card = load_checkpoint(path)
    assert card == tiny_card()
    assert read_card(path).model_id == "tiny"
    x = torch.randn(1, 3, 32, 64)
    with torch.inference_mode():
        assert torch.equal(loaded(x), model(x))


def test_truncated_checkpoint_is_rejected(tiny_checkpoint, tmp_path):
    path, _ = tiny_checkpoint
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CheckpointError, match=r"cut\.safetensors.*truncated or corrupt"):
        load_checkpoint(cut)


def test_foreign_safetensors_is_rejected(tmp_path):
    foreign = tmp_path / "foreign.safetensors"
    save_file({"w": torch.zeros(2)}, str(foreign))
    with pytest.raises(CheckpointError, match="without roadseg metadata"):
        load_checkpoint(foreign)


def test_pickle_file_is_rejected_without_unpickling(tmp_path):
    evil = tmp_path / "evil.safetensors"
    evil.write_bytes(b"\x80\x04\x95" + b"cos\nsystem\n" * 10)  # a pickle, never executed
    with pytest.raises(CheckpointError, match="evil"):
        load_checkpoint(evil)


def test_mismatched_weights_are_rejected(tmp_path):
    model = build_model("smp", TINY)
    other = dict(TINY, decoder_channels=[32, 8, 8])
    path = tmp_path / "mismatch.safetensors"
    save_checkpoint(path, model, tiny_card(arguments=other))
    with pytest.raises(CheckpointError, match="shape"):
        load_checkpoint(path)


def test_wrong_class_table_is_rejected(tmp_path):
    path = tmp_path / "nineteen.safetensors"
    save_checkpoint(path, build_model("smp", TINY), tiny_card(classes=tuple(f"c{i}" for i in range(19))))
    with pytest.raises(CheckpointError, match="19 classes"):
        load_checkpoint(path)


def test_malformed_card_is_rejected(tmp_path):
    path = tmp_path / "card.safetensors"
    card = json.dumps({"format": "roadseg.checkpoint", "format_version": 1})
    save_file({"w": torch.zeros(1)}, str(path), metadata={"roadseg": card})
    with pytest.raises(CheckpointError, match="malformed model card"):
        load_checkpoint(path)


def test_registry_unknown_model_lists_names():
    with pytest.raises(CheckpointError, match="demo"):
        load_model("no-such-model")


def test_backend_returns_uint8_masks_at_each_frame_size(tiny_checkpoint):
    path, _ = tiny_checkpoint
    model, card = load_checkpoint(path)
    backend = TorchBackend(model, card, device="cpu", precision="fp32")
    big, small = np.zeros((48, 80, 3), np.uint8), np.full((32, 64, 3), 200, np.uint8)
    images = [big, small, big.copy()]
    out = backend.infer(images)
    assert [m.shape for m in out.masks] == [(48, 80), (32, 64), (48, 80)]
    assert all(m.dtype == np.uint8 and int(m.max()) < len(CLASS_NAMES) for m in out.masks)
    assert out.valid == [True, True, True]
    assert np.array_equal(out.masks[0], out.masks[2]), "same input, same mask, regardless of batch position"
    assert out.timings.inference_ms > 0


def test_backend_mask_equals_model_argmax(tiny_checkpoint):
    path, _ = tiny_checkpoint
    model, card = load_checkpoint(path)
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (32, 64, 3), dtype=np.uint8)
    mask = TorchBackend(model, card, device="cpu", precision="fp32").infer([image]).masks[0]
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in (card.input.mean, card.input.std))
    x = (torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255 - mean) / std
    with torch.inference_mode():
        expected = model(x).argmax(1)[0].numpy()
    assert np.array_equal(mask, expected)


def test_precision_resolution():
    assert resolve_precision("auto", "cuda") == "fp16"
    assert resolve_precision("auto", "cpu") in ("bf16", "fp32")
    with pytest.raises(ValueError, match="fp16 is for CUDA"):
        resolve_precision("fp16", "cpu")
    with pytest.raises(ValueError, match="valid"):
        resolve_precision("int4", "cpu")


def test_iou_definitions():
    truth = np.array([[0, 1, 1, 2]], np.uint8)
    pred = np.array([[1, 1, 2, 2]], np.uint8)
    cm = confusion_matrix(truth, pred)
    ious = per_class_iou(cm)
    assert ious[0] == 0.0 and ious[1] == pytest.approx(1 / 3) and ious[2] == pytest.approx(1 / 2)
    assert np.isnan(ious[3])
    assert mean_iou(cm) == pytest.approx((0 + 1 / 3 + 1 / 2) / 3)
    # Void truth pixels ignored: class 1 then has tp=1, fn=1 (pred 2), fp=0.
    assert category_iou(cm) == pytest.approx((1 / 2 + 1 / 2) / 2)


def test_category_fold_is_the_log_sum_exp_of_each_categorys_members():
    from models.networks.category_head import NEVER_LOGIT, TRAIN_ID_TABLE, CategoryFold

    fold = CategoryFold(torch.nn.Identity())
    logits = torch.randn(2, len(TRAIN_ID_TABLE), 5, 7, generator=torch.Generator().manual_seed(3)) * 8
    logits[0, :, 0, 0] = -200.0  # one pixel where every class is hopeless: still finite
    logits[0, 0, 0, 0] = 0.0
    folded = fold(logits)
    for category in Category:
        members = [s for s, c in enumerate(TRAIN_ID_TABLE) if c == category]
        if not members:
            assert (folded[:, category] == NEVER_LOGIT).all()
            continue
        expected = torch.logsumexp(logits[:, members], dim=1)
        close = torch.isclose(folded[:, category], expected, atol=1e-5)
        close[0, 0, 0] = True  # checked below: clipped at max - 87 there, by design
        assert close.all(), category.name
    assert torch.isfinite(folded).all()
    assert folded[0, Category.FLAT, 0, 0] == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("backend", ["torch", "onnxruntime"])
def test_backends_name_a_bad_input_size_and_unknown_options(backend):
    from models.backends.registry import BackendError, create_backend

    model, card = load_model("demo")  # divisor 32, native 512x256
    with pytest.raises(BackendError, match=r"demo.*input size 500x250: .*multiples of 32.*nearest valid size 512x256"):
        create_backend(backend, model, card, device="cpu", input_size=(500, 250))
    with pytest.raises(BackendError, match=r"unknown options \['bogus'\]"):
        create_backend(backend, model, card, device="cpu", options={"bogus": 1})


@pytest.mark.parametrize("backend", ["torch", "onnxruntime"])
@pytest.mark.parametrize("bad", [np.zeros((256, 512, 3), np.float32), np.zeros((256, 512), np.uint8),
                                 np.zeros((256, 512, 4), np.uint8)])
def test_backends_name_an_image_that_is_not_hxwx3_uint8(backend, bad):
    from models.backends.registry import create_backend

    model, card = load_model("demo")
    good = np.zeros((256, 512, 3), np.uint8)
    runner = create_backend(backend, model, card, device="cpu", precision="fp32")
    with pytest.raises(ValueError, match=r"image 1: expected HxWx3 uint8 RGB, got"):
        runner.infer([good, bad])


def test_input_spec_size_rule():
    spec = InputSpec(size=(1024, 512), divisor=16)
    assert spec.size_problem(2048, 1024) is None
    assert "nearest valid size 192x96" in spec.size_problem(200, 100)
    assert "nearest valid size 16x16" in spec.size_problem(0, -5)
    with pytest.raises(ValueError, match="native input size 100x100"):
        InputSpec(size=(100, 100), divisor=32)
