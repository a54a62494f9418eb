"""Model cards are untrusted input: every architecture argument and input field is checked
against a declared schema before anything is built (issue 9)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import segmentation_models_pytorch as smp
import torch
from safetensors.torch import save_file

from models.networks.arguments import MAX_CLASSES, ModelConfigError
from models.networks.factory import MAX_TIMM_ENCODER_PARAMS, TIMM_ENCODERS, build_model, check_model_arguments
from models.store.checkpoint import CheckpointError, InputSpec, ModelCard, load_checkpoint, read_card

ROADSEG = [sys.executable, "-m", "stream.cli"]
HUGE = 20_000_000  # a 20M-way head: ~20 GB of conv weights if it were ever built
HUGE_TIMM = "tu-convnext_xxlarge"  # a real timm model: ~850 M parameters, 3.4 GB of fp32 weights


def _card(family: str = "dabnet", arguments: dict | None = None, **input_fields) -> dict:
    good = ModelCard(model_id="bad", family=family, arguments=arguments or {}, input=InputSpec(size=(64, 32)))
    body = json.loads(good.to_json())
    body["input"].update(input_fields)
    return body


def _write(path: Path, body: dict) -> Path:
    # The card fails before the weights are looked at, so one dummy tensor is enough.
    save_file({"w": torch.zeros(1)}, str(path), metadata={"roadseg": json.dumps(body)})
    return path


BAD_CARDS = {  # name -> (card, the key the message must name)
    "unknown-key": (_card(arguments={"bogus": 1}), "'bogus'"),
    "divisor-0": (_card(divisor=0), "'divisor'"),
    "num-classes-2e7": (_card(arguments={"num_classes": 2e7}), "'num_classes'"),
    "num-classes-huge-int": (_card(arguments={"num_classes": HUGE}), "'num_classes'"),
    "timm-encoder-huge": (_card("smp", {"arch": "unet", "encoder": HUGE_TIMM}), "'encoder'"),
}


@pytest.mark.parametrize("name", sorted(BAD_CARDS))
def test_bad_card_is_a_checkpoint_error_naming_file_and_key(tmp_path, name):
    body, key = BAD_CARDS[name]
    path = _write(tmp_path / f"{name}.safetensors", body)
    for reader in (read_card, load_checkpoint):
        start = time.monotonic()
        with pytest.raises(CheckpointError) as caught:
            reader(path)
        message = str(caught.value)
        assert str(path) in message and key in message, message
        assert time.monotonic() - start < 5, "refused before anything was built"


@pytest.mark.parametrize(("family", "arguments", "key"), [
    ("dabnet", {"num_classes": 19.0}, "'num_classes'"),  # a float is not a class count
    ("dabnet", {"num_classes": True}, "'num_classes'"),  # nor is a bool
    ("dabnet", {"num_classes": MAX_CLASSES + 1}, "'num_classes'"),
    ("dabnet", {"fold_to_categories": False}, "'fold_to_categories'"),  # 19 logits, not the 8 categories
    ("espnetv2", {"scale": 3.0}, "'scale'"),
    ("espnetv2", {"scale": 2.0, "num_classes": 5}, "'num_classes'"),  # the fold needs 19 trainIds
    ("smp", {"arch": "unet", "encoder": "resnet18", "in_channels": 4}, "'in_channels'"),
    ("smp", {"arch": "unet", "encoder": "resnet18", "decoder_channels": [16, 8, 10**9]}, "'decoder_channels'"),
    ("smp", {"arch": "unet", "encoder": "resnet18", "decoder_channels": "wide"}, "'decoder_channels'"),
    ("smp", {"arch": "unet", "encoder": "resnet18", "encoder_depth": 0}, "'encoder_depth'"),
    ("smp", {"arch": "deeplabv3", "encoder": "resnet18", "decoder_pab_channels": 8}, "'decoder_pab_channels'"),
    ("smp", {"encoder": "resnet18"}, "'arch'"),
    ("smp", {"arch": "unetx", "encoder": "resnet18"}, "unetx"),
    ("smp", {"arch": "unet", "encoder": HUGE_TIMM}, "'encoder'"),  # any timm model was let through
    ("smp", {"arch": "unet", "encoder": "tu-vit_giant_patch14_224"}, "'encoder'"),
    ("smp", {"arch": "unet", "encoder": "tu-resnet18.a1_in1k"}, "'encoder'"),  # exact names: no timm tags
    ("smp", {"arch": "unet", "encoder": "tu-"}, "'encoder'"),
])
def test_schema_names_the_bad_argument(family, arguments, key):
    with pytest.raises(ModelConfigError, match=key):
        check_model_arguments(family, arguments)
    with pytest.raises(ModelConfigError, match=key):
        build_model(family, arguments)


@pytest.mark.parametrize(("field", "value"), [
    ("size", [64, 0]), ("size", [10**6, 32]), ("size", [64]), ("std", [0.2, 0.0, 0.2]), ("mean", [0.5, "x", 0.5]),
    ("scale", float("inf")), ("channel_order", "RGBA"), ("divisor", 2.5), ("colour", "red"),
])
def test_input_fields_are_checked(tmp_path, field, value):
    path = _write(tmp_path / "input.safetensors", _card(**{field: value}))
    with pytest.raises(CheckpointError, match=f"input field '{field}'"):
        read_card(path)


def test_good_arguments_still_build():
    check_model_arguments("dabnet", {"num_classes": 19, "fold_to_categories": True})
    check_model_arguments("espnetv2", {"scale": 2})  # an int for a float argument is fine
    check_model_arguments("smp", {"arch": "Unet", "encoder": "resnet18", "encoder_depth": 3,
                                  "decoder_channels": [16, 8, 8], "decoder_attention_type": None})
    check_model_arguments("smp", {"arch": "deeplabv3plus", "encoder": "resnet18", "decoder_channels": 64,
                                  "decoder_atrous_rates": [6, 12, 18]})
    check_model_arguments("smp", {"arch": "unet", "encoder": "tu-mobilenetv3_small_100"})  # the demo's encoder


def test_timm_encoder_message_names_the_field_the_limit_and_the_choices():
    with pytest.raises(ModelConfigError) as caught:
        check_model_arguments("smp", {"arch": "unet", "encoder": HUGE_TIMM})
    message = str(caught.value)
    assert f"'encoder' {HUGE_TIMM!r}" in message, message
    assert f"under {MAX_TIMM_ENCODER_PARAMS // 1_000_000} M parameters" in message, message
    assert all(f"tu-{name}" in message for name in TIMM_ENCODERS), message


def test_allowed_timm_encoders_are_real_and_under_the_limit():
    """The list is the bound: every name on it is a timm model smp builds, under the limit. Built on the
    meta device (shapes only, no memory) as the smp encoder a card would get."""
    assert len(set(TIMM_ENCODERS)) == len(TIMM_ENCODERS)
    for name in TIMM_ENCODERS:
        with torch.device("meta"):
            encoder = smp.encoders.get_encoder(f"tu-{name}", weights=None)
        params = sum(p.numel() for p in encoder.parameters())
        assert 0 < params < MAX_TIMM_ENCODER_PARAMS, (name, params)


@pytest.mark.parametrize("name", sorted(BAD_CARDS))
@pytest.mark.parametrize("command", ["eval", "run"])
def test_cli_exits_2_without_traceback(tmp_path, cityscapes_mini, name, command):
    body, key = BAD_CARDS[name]
    path = _write(tmp_path / f"{name}.safetensors", body)
    if command == "eval":
        args = ["eval", "--model", str(path), "--cityscapes", str(cityscapes_mini), "--out", str(tmp_path / "r")]
    else:
        args = ["run", "--model", str(path), "--source", f"cityscapes:{cityscapes_mini}", "--viewer", "off",
                "--zmq", "off"]
    result = subprocess.run([*ROADSEG, *args], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    assert f"roadseg: error: checkpoint {path}" in result.stderr and key in result.stderr, result.stderr
