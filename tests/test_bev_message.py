"""The bird's-eye grid and the camera file on the wire (roadseg.bev, roadseg.camera_info, the mask
header's camera_hash): the formats both ways, hostile input refused, and a real pipeline started with a
camera file publishing them to a real subscriber."""

from __future__ import annotations

import contextlib
import random
from dataclasses import replace
from typing import Any

import numpy as np
import pytest

from calibration.bev import BevGrid
from calibration.camera import CameraFileError, CameraModel, Pose
from calibration.ground import ground_from_pose
from decision_bridge.bev import UNKNOWN_ID, BevHeader, decode_bev, encode_bev
from decision_bridge.camera_info import CameraInfoHeader, camera_hash, decode_camera_info, encode_camera_info
from decision_bridge.publisher import MaskPublisher
from decision_bridge.schema import CLASS_NAMES, Encoding, SchemaError, decode, encode_message
from models.backends.common import Precision
from models.classes import Category
from stream.config import PipelineConfig
from stream.geometry import StreamCamera
from stream.pipeline import Pipeline
from tests.pipeline_helpers import LOOPBACK_ANY, receive, running, subscribe, torch_factory, wait_for
from tests.test_decision_bridge import make_header


def _header(**changes: Any) -> BevHeader:
    base = BevHeader(stream_id="cam0", run_id="r", seq=3, capture_mono_ns=1, capture_wall_ns=2, publish_mono_ns=3,
                     publish_wall_ns=4, cells_x=6, cells_y=4, resolution_m=0.5, origin_x_m=0.0, origin_y_m=-1.0,
                     encoding=Encoding.ZLIB, classes=CLASS_NAMES, road=True, valid=True, camera_hash="sha256:ab",
                     known_fraction=0.75)
    return replace(base, **changes)


def _grids() -> tuple[np.ndarray, np.ndarray]:
    classes = np.full((4, 6), Category.FLAT, np.uint8)
    classes[:, 0] = UNKNOWN_ID
    classes[1, 3] = Category.VEHICLE
    road = (classes == Category.FLAT).astype(np.uint8)
    road[:, 0] = UNKNOWN_ID
    return classes, road


@pytest.mark.parametrize("encoding", list(Encoding))
def test_bev_message_round_trips(encoding):
    classes, road = _grids()
    message = decode_bev(encode_bev(_header(encoding=encoding), classes, road))
    assert message.header == _header(encoding=encoding)
    assert (message.classes == classes).all() and message.road is not None and (message.road == road).all()
    without = decode_bev(encode_bev(_header(road=False), classes, None))
    assert without.road is None and (without.classes == classes).all()


def test_bev_message_refuses_what_does_not_add_up():
    classes, road = _grids()
    parts = encode_bev(_header(), classes, road)
    bad_ids = classes.copy()
    bad_ids[0, 0] = 9  # neither a class id nor unknown
    with pytest.raises(SchemaError, match="id >= 8 classes"):
        decode_bev([parts[0], parts[1], encode_bev(_header(), bad_ids, road)[2], parts[3]])
    with pytest.raises(SchemaError, match="road grid holds values other than"):
        decode_bev([*parts[:3], encode_bev(_header(), classes, road * 2)[3]])
    with pytest.raises(SchemaError, match="road is false but"):
        decode_bev([*encode_bev(_header(road=False), classes, None)[:3], parts[3]])
    with pytest.raises(SchemaError, match="expected 4 parts"):
        decode_bev(parts[:3])
    with pytest.raises(SchemaError, match="does not match bev"):
        decode_bev([b"bev/cam1", *parts[1:]])
    with pytest.raises(SchemaError, match="classes grid: u8-zlib payload"):
        decode_bev([parts[0], parts[1], parts[2][:-3], parts[3]])
    with pytest.raises(SchemaError, match="cells_x out of range"):
        encode_bev(_header(cells_x=0), classes, road)
    with pytest.raises(SchemaError, match="shape"):
        encode_bev(_header(), classes[:, :5], road)


def test_bev_and_camera_decoders_raise_only_schema_errors_on_garbage():
    classes, road = _grids()
    good_bev = encode_bev(_header(), classes, road)
    body = b'{"schema":"roadseg.camera","version":1}'
    good_camera = encode_camera_info(CameraInfoHeader("cam0", "r", camera_hash(body), 1000.0, 1, 2), body)
    rng = random.Random(12)
    for good, decoder in ((good_bev, decode_bev), (good_camera, decode_camera_info)):
        for _ in range(400):
            parts = [bytearray(p) for p in good]
            frame = parts[rng.randrange(len(parts))]
            for _ in range(rng.randint(1, 4)):
                if frame and rng.random() < 0.7:
                    frame[rng.randrange(len(frame))] = rng.randrange(256)
                else:
                    del frame[rng.randrange(len(frame) + 1):]
            with contextlib.suppress(SchemaError):
                decoder([bytes(p) for p in parts])


def test_camera_message_carries_the_file_its_hash_names():
    camera = _camera()
    body = camera.canonical_json()
    header = CameraInfoHeader("front", "r", camera.hash, 1000.0, 5, 6)
    info = decode_camera_info(encode_camera_info(header, body))
    assert info.header == header and info.camera_json == body
    assert info.camera["K"] == camera.to_json()["K"] and info.camera["schema"] == "roadseg.camera"
    parts = encode_camera_info(header, body)
    tampered = body.replace(b"204.8", b"205.0", 1)  # fx of a 256 px wide camera
    assert tampered != body
    with pytest.raises(SchemaError, match="does not hash to camera_hash"):
        decode_camera_info([parts[0], parts[1], tampered])
    with pytest.raises(SchemaError, match="does not match camera"):
        decode_camera_info([b"camera/rear", *parts[1:]])


def test_mask_header_names_the_camera_add_only():
    mask = np.zeros((4, 6), np.uint8)
    named = decode(encode_message(replace(make_header(height=4, width=6), camera_hash="sha256:00"), mask))
    assert named.header.camera_hash == "sha256:00"
    plain = decode(encode_message(make_header(height=4, width=6), mask))
    assert plain.header.camera_hash is None  # absent, or null: the stream has no camera file


def test_publisher_serves_bev_and_camera_subscriptions():
    publisher = MaskPublisher(LOOPBACK_ANY, stream_ids=["front"])
    try:
        assert publisher._serves(b"bev/front") and publisher._serves(b"camera/front") and publisher._serves(b"bev/")
        assert not publisher._serves(b"bev/rear")
    finally:
        publisher.close()


def _camera(width: int = 256, height: int = 128) -> CameraModel:
    K = np.array([[0.8 * width, 0.0, width / 2 - 0.5], [0.0, 0.8 * width, 0.42 * height - 0.5], [0.0, 0.0, 1.0]])
    camera = CameraModel(width, height, K, "plumb_bob", np.array([-0.05, 0.01, 0.0, 0.0, 0.0]), K,
                         source="front.json")
    return camera.with_ground(ground_from_pose(camera, Pose(1.3)))


async def test_pipeline_with_a_camera_publishes_bev_grids_and_the_camera_file():
    camera = _camera()
    config = PipelineConfig(sources=("front=synthetic:seed=1,size=256x128,frames=4",), model="demo",
                            precision=Precision.FP32, zmq_address=LOOPBACK_ANY, zmq_wait_subscriber_s=30.0,
                            viewer=None, stats_interval_s=0, cameras=(StreamCamera("front", camera),),
                            bev_grid=BevGrid(30, 16, 0.2))
    async with running(config) as (pipeline, task):
        sub = await subscribe(pipeline, task)
        try:
            masks = await receive(sub, 4)
            await wait_for(lambda: (sub.poll(0) or True) and sub.bev("front") is not None
                           and sub.bev("front").header.seq == 3 and sub.camera("front") is not None,
                           timeout_s=30, what="the bev of frame 3 and the camera file")
        finally:
            sub.close()
        await task
    bev, info = sub.bev("front"), sub.camera("front")
    assert bev is not None and info is not None
    assert masks[3].header.camera_hash == camera.hash == bev.header.camera_hash == info.header.camera_hash
    assert bev.header.run_id == masks[3].header.run_id and bev.road is None  # the demo model has no road layer
    assert (bev.header.cells_x, bev.header.cells_y, bev.header.resolution_m) == (150, 80, 0.2)
    assert bev.classes.shape == (80, 150)
    assert 0.3 < bev.header.known_fraction < 0.9 and (bev.classes == UNKNOWN_ID).any()
    assert (bev.classes[:, 30:100] == Category.FLAT).mean() > 0.3  # the road ahead, 6 to 20 m
    assert info.camera["ground"]["method"] == "pose"


async def test_camera_file_of_another_size_or_stream_is_refused_before_the_model_loads():
    for cameras, match in (((StreamCamera("front", _camera(512, 256)),), "is for 512x256 images, but stream front"),
                           ((StreamCamera("rear", _camera()),), r"--camera for unknown stream\(s\) \['rear'\]")):
        config = PipelineConfig(sources=("front=synthetic:seed=1,size=256x128,frames=2",), model="demo",
                                zmq_address=None, viewer=None, stats_interval_s=0, cameras=cameras)
        loaded: list[int] = []

        def factory(config: PipelineConfig = config, loaded: list[int] = loaded) -> Any:
            loaded.append(1)
            return torch_factory(config)()

        with pytest.raises(CameraFileError, match=match):
            await Pipeline(config, factory).run()
        assert not loaded


async def test_viewer_serves_the_newest_grid_as_png():
    import aiohttp
    import cv2

    sources = ("front=synthetic:seed=1,size=256x128,frames=300", "rear=synthetic:size=256x128,frames=300")
    config = PipelineConfig(sources=sources, model="demo", precision=Precision.FP32, zmq_address=None,
                            viewer=("127.0.0.1", 0), stats_interval_s=0, realtime=True,  # runs until stopped here
                            cameras=(StreamCamera("front", _camera()),), bev_grid=BevGrid(30, 16, 0.2))
    async with running(config) as (pipeline, task):
        await wait_for(lambda: pipeline.telemetry.frames >= 4 or task.done(), timeout_s=60, what="four frames")
        base = f"http://127.0.0.1:{pipeline.viewer_port}/api/bev"
        async with aiohttp.ClientSession() as session:
            async with session.get(base) as response:
                assert await response.json() == {"streams": ["front"]}
            async with session.get(f"{base}/front.png") as response:
                assert response.status == 200 and response.content_type == "image/png"
                picture = cv2.imdecode(np.frombuffer(await response.read(), np.uint8), cv2.IMREAD_COLOR)
            for missing in ("rear", "nope"):  # no camera file; no such stream
                async with session.get(f"{base}/{missing}.png") as response:
                    assert response.status == 404
    assert picture.shape == (150 * 2, 80 * 2, 3)  # forward up: 30 m / 0.2 m rows, 16 m / 0.2 m columns, x2


async def test_the_viewer_page_shows_the_grid_beside_the_camera_view(tmp_path):
    from tests.test_web_viewer import chromium_page, wait_for_page

    config = PipelineConfig(sources=("front=synthetic:seed=1,size=256x128,frames=600",), model="demo",
                            precision=Precision.FP32, zmq_address=None, viewer=("127.0.0.1", 0), stats_interval_s=0,
                            realtime=True, cameras=(StreamCamera("front", _camera()),), bev_grid=BevGrid(30, 16, 0.2))
    async with running(config) as (pipeline, task), chromium_page(tmp_path / "profile") as (page, errors):
        await wait_for(lambda: pipeline.viewer_port is not None or task.done(), timeout_s=60, what="the viewer")
        await page.goto(f"http://127.0.0.1:{pipeline.viewer_port}/")
        await wait_for_page(page, "() => { const img = document.querySelector('.panel[data-stream=\"front\"] "
                                  "figure.bev img'); return !!img && img.naturalWidth > 0; }", timeout=90)
        size = await page.evaluate("() => { const img = document.querySelector('figure.bev img'); "
                                   "return [img.naturalWidth, img.naturalHeight]; }")
        assert size == [80 * 2, 150 * 2]
        assert not errors, errors


async def test_a_recording_of_another_size_fails_its_stream_naming_the_camera_file(tmp_path):
    from tests.source_helpers import image_folder

    (tmp_path / "frames").mkdir()
    folder = image_folder(tmp_path / "frames", 2, size=(320, 160))
    config = PipelineConfig(sources=(f"front={folder}",), model="demo", precision=Precision.FP32, zmq_address=None,
                            viewer=None, stats_interval_s=0, cameras=(StreamCamera("front", _camera()),))
    summary = await Pipeline(config, torch_factory(config)).run()
    assert any("front.json is for 256x128 images, but stream front delivers 320x160 frames" in e
               for e in summary["errors"]), summary["errors"]


def test_the_road_grid_keeps_road_on_flat_ground_and_unknown_where_unseen():
    from stream.geometry import StreamCalibration, bev_parts

    camera = _camera()
    calibration = StreamCalibration(camera, BevGrid(30, 16, 0.2), None)
    mask = np.full((128, 256), Category.FLAT, np.uint8)
    mask[:, :128] = Category.NATURE  # the left half of the image is grass
    road = np.ones((128, 256), bool)  # the model says road everywhere: only flat ground may be
    out = calibration.project(mask, road)
    assert out is not None and out.road is not None and calibration.latest is out
    known = out.classes != UNKNOWN_ID
    assert ((out.road == UNKNOWN_ID) == ~known).all()
    assert (out.road[known] == (out.classes[known] == Category.FLAT)).all()
    assert (out.road == 1).any() and (out.road == 0).any()
    header = replace(make_header(height=128, width=256, stream_id="front"), camera_hash=camera.hash)
    message = decode_bev(bev_parts(header, out))
    assert message.road is not None and (message.road == out.road).all() and message.header.road
