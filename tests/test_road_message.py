"""Drivable space on the wire (roadseg.road) and downscaled masks (--mask-scale): the format both
ways, and a real pipeline publishing them."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np
import pytest

from decision_bridge.road import RoadHeader, decode_road, encode_road
from decision_bridge.schema import Encoding, SchemaError
from models.backends.common import Precision
from models.classes import Category
from stream.config import PipelineConfig
from stream.stages import downscale, road_output
from tests.conftest import require_shared
from tests.pipeline_helpers import LOOPBACK_ANY, receive, running, subscribe, wait_for


def _header(**changes: Any) -> RoadHeader:
    base = RoadHeader(stream_id="cam0", run_id="r", seq=3, capture_mono_ns=1, publish_mono_ns=2, publish_wall_ns=3,
                      height=4, width=6, layer_height=4, layer_width=6, encoding=Encoding.ZLIB, valid=True,
                      category_fractions=(0.5, 0.5, 0, 0, 0, 0, 0, 0), road_fraction=0.25)
    return replace(base, **changes)


def test_road_message_round_trips_and_refuses_what_does_not_add_up():
    road = np.zeros((4, 6), bool)
    road[2:, 1:4] = True
    rows = np.array([4, 2, 2, 2, 4, 4])
    parts = encode_road(_header(), rows, road)
    message = decode_road(parts)
    assert message.header == _header()
    assert message.free_rows.tolist() == rows.tolist() and (message.road == road).all()
    with pytest.raises(SchemaError, match="free_rows must be 6 rows"):
        encode_road(_header(), rows[:5], road)
    with pytest.raises(SchemaError, match="beyond the frame height"):
        decode_road([parts[0], parts[1], np.full(6, 9, "<u2").tobytes(), parts[3]])
    with pytest.raises(SchemaError, match="expected 4 parts"):
        decode_road(parts[:3])
    with pytest.raises(SchemaError, match="does not match road"):
        decode_road([b"road/cam1", *parts[1:]])


def test_road_output_keeps_road_inside_flat_ground_and_scales_the_layer_only():
    mask = np.full((8, 8), 1, np.uint8)  # all flat
    mask[:, :2] = 0  # a static void strip on the left (the bonnet, say)
    road = np.ones((8, 8), bool)
    out = road_output(mask, road, scale=2)
    assert out.layer.shape == (4, 4) and not out.layer[:, 0].any()
    assert out.free_rows.tolist() == [8, 8, 0, 0, 0, 0, 0, 0]  # void columns: no road at the bottom
    assert out.space.road_fraction == pytest.approx(0.75)
    assert downscale(np.arange(16, dtype=np.uint8).reshape(4, 4), 2).tolist() == [[5, 7], [13, 15]]


async def test_pipeline_publishes_masks_at_the_scale_asked_with_the_frame_size():
    config = PipelineConfig(sources=("cam=synthetic:seed=1,size=256x128,frames=3",), model="demo",
                            precision=Precision.FP32, zmq_address=LOOPBACK_ANY, zmq_wait_subscriber_s=30.0,
                            viewer=None, stats_interval_s=0, mask_scale=4)
    async with running(config) as (pipeline, task):
        sub = await subscribe(pipeline, task)
        try:
            messages = await receive(sub, 3)
        finally:
            sub.close()
        await task
    header = messages[0].header
    assert (header.height, header.width, header.frame_height, header.frame_width) == (32, 64, 128, 256)
    assert messages[0].mask.shape == (32, 64)
    assert sub.road("cam") is None  # the demo model has no road class


async def test_dabnet_pipeline_publishes_drivable_space_after_each_mask(dabnet_checkpoint):
    frames = require_shared("cityscapes/leftImg8bit/val/frankfurt")
    config = PipelineConfig(sources=(f"cam={frames}",), model=str(dabnet_checkpoint), input_size=(512, 256),
                            precision=Precision.FP32, zmq_address=LOOPBACK_ANY, zmq_wait_subscriber_s=60.0,
                            viewer=None, stats_interval_s=0, max_frames=2, mask_scale=2)
    async with running(config) as (pipeline, task):
        sub = await subscribe(pipeline, task)
        try:
            masks = await receive(sub, 2, timeout_s=120)
            await wait_for(lambda: (sub.poll(0) or True) and sub.road("cam") is not None
                           and sub.road("cam").header.seq == 1, timeout_s=60, what="the road message of frame 1")
        finally:
            sub.close()
        await task
    road = sub.road("cam")
    assert road is not None
    mask = masks[1].mask
    assert road.header.seq == masks[1].header.seq and road.header.run_id == masks[1].header.run_id
    assert road.road.shape == mask.shape == (512, 1024)  # the published mask's size (--mask-scale 2)
    assert (road.header.height, road.header.width) == (1024, 2048) and road.free_rows.shape == (2048,)
    assert not (road.road & (mask != Category.FLAT)).any()  # road only on flat ground
    assert 0.1 < road.header.road_fraction < 0.6  # a Frankfurt street: a good share of road
    assert int(np.median(road.free_rows)) < 1024  # most columns have road at the bottom
