"""The camera file: strict JSON with a schema version and a content hash; a file missing fields, or
for another image size than its stream's, is refused with a message naming the file and the field."""

from __future__ import annotations

import json

import numpy as np
import pytest

from calibration.camera import CameraFileError, CameraModel, Pose, load_camera
from calibration.ground import ground_from_pose

K = np.array([[400.0, 0.0, 239.5], [0.0, 400.0, 179.5], [0.0, 0.0, 1.0]])


def _camera() -> CameraModel:
    camera = CameraModel(480, 360, K, "plumb_bob", np.array([-0.2, 0.05, 0.0, 0.0, 0.0]), K,
                         {"rms_px": 0.1, "images": [], "rejected": []})
    return camera.with_ground(ground_from_pose(camera, Pose(1.3, 2.0)))


def test_round_trip_keeps_the_hash(tmp_path):
    camera = _camera()
    path = tmp_path / "cam.json"
    camera.save(path)
    loaded = load_camera(path)
    assert loaded.hash == camera.hash and loaded.hash.startswith("sha256:") and len(loaded.hash) == 71
    assert loaded.source == str(path) and loaded.ground is not None and loaded.ground.pose == Pose(1.3, 2.0)
    # Reformatting does not change it; changing a value does.
    path.write_text(json.dumps(json.loads(path.read_text())))
    assert load_camera(path).hash == camera.hash
    obj = json.loads(path.read_text())
    obj["K"][0][0] = 401.0
    path.write_text(json.dumps(obj))
    assert load_camera(path).hash != camera.hash


@pytest.mark.parametrize(("change", "message"), [
    (lambda o: o.pop("K"), "missing field K"),
    (lambda o: o["distortion"].pop("coefficients"), "missing field distortion.coefficients"),
    (lambda o: o.update(image_size=[480]), "field image_size must be 2 integers"),
    (lambda o: o["distortion"].update(coefficients=[0.1, 0.2]), "must be 5 numbers for the plumb_bob model"),
    (lambda o: o["distortion"].update(model="fisheye"), "'fisheye' is not supported"),
    (lambda o: o.update(K=[[400, 0, 240], [0, 400, 180]]), "field K must be a 3x3 list of numbers"),
    (lambda o: o.update(K=[[-400, 0, 240], [0, 400, 180], [0, 0, 1]]), "positive focal lengths"),
    (lambda o: o.update(version=2), "field version 2 is not supported"),
    (lambda o: o.update(schema="roadseg.mask"), "is this a camera file"),
    (lambda o: o["ground"].pop("H"), "missing field ground.H"),
    (lambda o: o["ground"]["H_inv"][0].__setitem__(0, 5.0), "not the inverse of ground.H"),
])
def test_a_file_missing_fields_is_refused_naming_file_and_field(tmp_path, change, message):
    path = tmp_path / "cam.json"
    obj = _camera().to_json()
    change(obj)
    path.write_text(json.dumps(obj))
    with pytest.raises(CameraFileError, match=r"camera file .*cam\.json: ") as info:
        load_camera(path)
    assert message in str(info.value)


def test_not_json_or_missing(tmp_path):
    with pytest.raises(CameraFileError, match="no such file"):
        load_camera(tmp_path / "none.json")
    (tmp_path / "bad.json").write_text('{"K": NaN}')
    with pytest.raises(CameraFileError, match=r"bad\.json: not valid JSON"):
        load_camera(tmp_path / "bad.json")


def test_size_check_against_a_stream():
    camera = _camera()
    camera.check_size(480, 360, "stream front")
    with pytest.raises(CameraFileError, match=r"is for 480x360 images, but stream front delivers 1024x512 frames"):
        camera.check_size(1024, 512, "stream front")


def test_calibration_is_an_offline_tool_that_never_imports_stream():
    import subprocess
    import sys

    code = ("import sys, calibration.cli, calibration.bev, calibration.ground, calibration.intrinsics, "
            "calibration.undistort; print(sorted(m for m in sys.modules if m == 'stream' or m.startswith('stream.')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
