"""The drivable-road layer in model cards and ``roadseg eval`` (issue 10): which models have a
road class, and the road IoU eval reports and records."""

from __future__ import annotations

import argparse
import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from models.backends import TorchBackend
from models.classes import Category
from models.datasets.cityscapes import read_cityscapes_label_ids, read_rgb
from models.evaluation.evaluate import evaluate
from models.evaluation.metrics import ROAD_IOU_LABEL
from models.evaluation.record import EVAL_METRICS_KEY, eval_record, record_metrics
from models.evaluation.report import format_table, metrics_dict
from models.store.checkpoint import CheckpointError, InputSpec, ModelCard, load_checkpoint, read_card
from models.store.registry import load_model

MINI_FRAME = "frankfurt_000000_000294"
MINI_SIZE = (256, 128)  # the mini frame's own size: DABNet at it takes milliseconds
EXACT = {"device": "cpu", "precision": "fp32", "progress": False, "panels": 0}
# cityscapesScripts labels.py: the labelIds with ignoreInEval (void 0..6 and eight labels of a category).
IGNORE_IN_EVAL = [0, 1, 2, 3, 4, 5, 6, 9, 10, 14, 15, 16, 18, 29, 30]
ROAD_LABEL_ID = 7


def _card_body(family: str, arguments: dict, **fields) -> dict:
    body = json.loads(ModelCard(model_id="m", family=family, arguments=arguments, input=InputSpec(size=(64, 32)))
                      .to_json())
    body.update(fields)
    return body


def _write(path: Path, body: dict) -> Path:
    save_file({"w": torch.zeros(1)}, str(path), metadata={"roadseg": json.dumps(body)})
    return path


SMP = {"arch": "unet", "encoder": "resnet18"}


def test_imported_19_class_models_declare_the_road_layer(dabnet_checkpoint):
    card = read_card(dabnet_checkpoint)
    assert card.layers == ("road",) and card.has_road
    assert json.loads(card.to_json())["layers"] == ["road"]
    assert not load_model("demo")[1].has_road  # smp: the 8 categories only


@pytest.mark.parametrize(("family", "arguments", "provenance", "expected"), [
    ("dabnet", {}, {"importer": "paddle_dabnet"}, ("road",)),  # cards written before the key: imported 19-class
    ("espnetv2", {"scale": 2.0}, {}, ("road",)),
    ("dabnet", {}, {"trained_by": "roadseg train", "init": "dabnet-cityscapes"}, ("road",)),  # fine-tuned
    ("dabnet", {}, {"trained_by": "roadseg train", "epoch": 3}, ()),  # from scratch on 8 categories: no road class
    ("smp", SMP, {}, ()),
])
def test_old_cards_without_the_key_still_load_with_derived_layers(tmp_path, family, arguments, provenance,
                                                                   expected):
    body = _card_body(family, arguments, provenance=provenance)
    del body["layers"]
    assert read_card(_write(tmp_path / "old.safetensors", body)).layers == expected


@pytest.mark.parametrize(("family", "arguments", "layers", "message"), [
    ("smp", SMP, ["road"], "smp models cannot produce layer 'road'; valid: none"),  # no road class to offer
    ("dabnet", {}, ["lanes"], "cannot produce layer 'lanes'; valid: road"),
    ("dabnet", {}, "road", "must be a list"),
    ("dabnet", {}, [7], "must be a list"),
    ("dabnet", {}, {"road": True}, "must be a list"),
    ("dabnet", {}, ["road", "road"], "twice"),
])
def test_bad_layers_are_refused_naming_file_and_key(tmp_path, family, arguments, layers, message):
    path = _write(tmp_path / "bad.safetensors", _card_body(family, arguments, layers=layers))
    for reader in (read_card, load_checkpoint):
        with pytest.raises(CheckpointError, match="'layers'") as caught:
            reader(path)
        assert str(path) in str(caught.value) and message in str(caught.value), caught.value


def test_cards_built_in_code_are_checked_too():
    assert ModelCard(model_id="m", family="dabnet", arguments={}).layers == ()  # says so: no road unless declared
    for bad in (["road"], ("road", "road"), ("lanes",)):
        with pytest.raises(ValueError, match="layers"):
            ModelCard(model_id="m", family="dabnet", arguments={}, layers=bad)  # type: ignore[arg-type]


def test_a_model_without_road_class_says_so_and_omits_it(cityscapes_mini):
    result = evaluate("demo", cityscapes_mini, road=True, **EXACT)
    assert result.road_iou is None and result.road_confusion is None
    assert "has no road class" in result.road_note
    assert "road IoU: omitted: model demo-synthetic-unet-mnv3s has no road class" in format_table(result)
    assert metrics_dict(result)["road_iou"] is None
    assert "road_iou" not in eval_record(result)


def _independent_road_iou(model, card, root: Path) -> float:
    """Road IoU of the mini frame computed here: the torch backend's categories, the margin from the
    network's 19 logits upsampled to the frame, and the Cityscapes road class IoU from raw labelIds."""
    image = read_rgb(next(root.glob(f"leftImg8bit/val/*/{MINI_FRAME}_leftImg8bit.png")))
    label_ids = read_cityscapes_label_ids(next(root.glob(f"gtFine/val/*/{MINI_FRAME}_gtFine_labelIds.png")),
                                          image.shape[:2])
    categories = TorchBackend(model, card, device="cpu", precision="fp32", input_size=MINI_SIZE).infer([image]).masks[0]
    spec = card.input
    x = torch.from_numpy(image).permute(2, 0, 1)[None].float() * spec.scale
    x = (x - torch.tensor(spec.mean).view(1, 3, 1, 1)) / torch.tensor(spec.std).view(1, 3, 1, 1)
    with torch.inference_mode():
        logits = F.interpolate(model.net(x)[:, :19], size=image.shape[:2], mode="bilinear", align_corners=False)
    road = (categories == Category.FLAT) & (logits[0, 0] > logits[0, 1]).numpy()
    scored = ~np.isin(label_ids, IGNORE_IN_EVAL)
    truth = label_ids == ROAD_LABEL_ID
    tp = np.count_nonzero(truth & road & scored)
    return tp / (tp + np.count_nonzero((truth ^ road) & scored))


def test_eval_scores_the_road_layer_of_dabnet(dabnet_checkpoint, cityscapes_mini, tmp_path):
    loaded = load_checkpoint(dabnet_checkpoint)
    result = evaluate("dabnet", cityscapes_mini, size=MINI_SIZE, loaded=loaded, road=True, **EXACT)
    without = evaluate("dabnet", cityscapes_mini, size=MINI_SIZE, loaded=loaded, **EXACT)
    assert np.array_equal(result.confusion, without.confusion)  # the categories are scored as before
    assert without.road_iou is None and "--no-road" in without.road_note
    assert result.road_iou == pytest.approx(_independent_road_iou(*loaded, cityscapes_mini), abs=1e-3)
    assert result.road_iou > 0.8, result.road_iou
    assert "the torch cpu fp32 backend's own road layer" in result.road_note  # no second pass
    assert result.timing_ms["road_layer"] == 0
    line = next(line for line in format_table(result).splitlines() if line.startswith(ROAD_IOU_LABEL))
    assert f" {100 * result.road_iou:.2f}   (flat pixels where road outscores sidewalk" in line, line
    assert metrics_dict(result)["road_confusion"] == result.road_confusion.tolist()

    copy = shutil.copy(dabnet_checkpoint, tmp_path / "dabnet.safetensors")
    key = record_metrics(Path(copy), result)
    card = read_card(Path(copy))
    assert card.metrics[EVAL_METRICS_KEY][key]["road_iou"] == pytest.approx(result.road_iou, abs=1e-6)
    assert card.layers == ("road",)


@pytest.mark.skipif(importlib.util.find_spec("onnxruntime") is None, reason="onnxruntime not installed")
def test_onnxruntime_is_scored_on_its_own_road_layer(dabnet_checkpoint, cityscapes_mini, tmp_path, monkeypatch):
    """The frames graph emits the road layer: eval scores it, with no second pass, and it scores
    as the torch backend's does (their categories agree on the mini frame)."""
    monkeypatch.setenv("ROADSEG_CACHE", str(tmp_path))  # the export goes here
    loaded = load_checkpoint(dabnet_checkpoint)
    onnx = evaluate("dabnet", cityscapes_mini, size=MINI_SIZE, loaded=loaded, road=True, backend="onnxruntime",
                    **EXACT)
    torch_eval = evaluate("dabnet", cityscapes_mini, size=MINI_SIZE, loaded=loaded, road=True, **EXACT)
    assert "torch" not in onnx.road_note and not onnx.timing_ms.get("road_layer")
    assert onnx.road_iou == pytest.approx(torch_eval.road_iou, abs=2e-3)


def test_a_backend_without_the_road_layer_is_scored_through_the_reference_pass(dabnet_checkpoint, cityscapes_mini,
                                                                              tmp_path, monkeypatch):
    """A backend that returns categories only (TensorRT, CUDA graphs, an export from before the
    layer; here ONNX Runtime told its graph has no road output): eval takes the margin from a
    second, torch pass, and scores the same road layer as the torch backend emits."""
    from models.backends import onnx_backend

    monkeypatch.setenv("ROADSEG_CACHE", str(tmp_path))
    monkeypatch.setattr(onnx_backend, "check_frames_io", lambda *args: False)
    loaded = load_checkpoint(dabnet_checkpoint)
    onnx = evaluate("dabnet", cityscapes_mini, size=MINI_SIZE, loaded=loaded, road=True, backend="onnxruntime",
                    **EXACT)
    torch_eval = evaluate("dabnet", cityscapes_mini, size=MINI_SIZE, loaded=loaded, road=True, **EXACT)
    assert "margin from a torch cpu fp32 pass" in onnx.road_note and onnx.timing_ms["road_layer"] > 0
    assert onnx.road_iou == pytest.approx(torch_eval.road_iou, abs=2e-3)


def test_dabnet_road_iou_on_a_real_val_frame(dabnet_checkpoint, cityscapes_root):
    """One real frame at half size (cheap): the layer is good road, not a broken channel."""
    result = evaluate("dabnet", cityscapes_root, size=(1024, 512), limit=1, loaded=load_checkpoint(dabnet_checkpoint),
                      road=True, **EXACT)
    assert result.road_iou > 0.95, result.road_iou  # 0.981 measured on this frame


def test_the_cli_scores_the_road_layer_unless_told_not_to():
    from models.evaluation.evaluate import add_subcommand

    parser = argparse.ArgumentParser()
    add_subcommand(parser.add_subparsers())
    base = ["eval", "--model", "dabnet-cityscapes", "--cityscapes", "data"]
    assert parser.parse_args(base).road is True
    assert parser.parse_args([*base, "--no-road"]).road is False
