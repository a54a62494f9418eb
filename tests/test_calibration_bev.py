"""The bird's-eye grid: on a synthetic drive frame, with the ground plane derived from the renderer's
own camera, the road lands where the renderer put it (IoU of the road cells >= 0.9 within 30 m);
cells the camera cannot see are unknown, never free."""

from __future__ import annotations

import numpy as np
import pytest

from calibration.bev import UNKNOWN, BevGrid, BevProjector, bev_image, parse_grid
from calibration.camera import CameraModel, Pose
from calibration.ground import ground_from_pose
from models.classes import PALETTE, Category
from models.datasets.synthetic_scene import SyntheticDrive
from models.datasets.synthetic_spec import parse_synthetic_spec
from stream.cli import DEMO_SOURCE
from stream.geometry import synthetic_camera

WITHIN_M = 30.0


def _drive_camera(drive: SyntheticDrive, index: int, pose: Pose | None = None) -> CameraModel:
    """What `roadseg calibrate` would write for the drive's camera at this frame: K (no distortion) and the
    ground plane from its height (the drive's pitch wobble moves its principal point, not its pose)."""
    view = drive.camera(index)
    K = view.K()
    camera = CameraModel(drive.width, drive.height, K, "plumb_bob", np.zeros(5), K)
    return camera.with_ground(ground_from_pose(camera, pose or Pose(view.height_m)))


def _road_iou(drive: SyntheticDrive, index: int, camera: CameraModel) -> tuple[float, np.ndarray]:
    grid = BevGrid()
    _image, truth = drive.render(index, noise=False)
    cells = BevProjector(camera, grid).project(truth)
    xs, ys = grid.centres()
    x, y = np.meshgrid(xs, ys)
    expected = drive.camera(index).ground_category(x, y)
    # Cells that show the road surface (flat or nature): things standing on the road hide what is behind
    # them, and a hidden cell is not a misplaced one.
    seen = (x < WITHIN_M) & np.isin(cells, (Category.FLAT, Category.NATURE))
    got, want = (cells == Category.FLAT) & seen, (expected == Category.FLAT) & seen
    return float((got & want).sum() / (got | want).sum()), cells


@pytest.mark.parametrize("index", [0, 40, 200])
def test_bev_road_lies_where_the_renderer_put_it(index):
    drive = SyntheticDrive(7, 1024, 512)
    iou, cells = _road_iou(drive, index, _drive_camera(drive, index))
    assert iou >= 0.9
    near = cells[:, : round(WITHIN_M / BevGrid().cell_m)]
    assert (near == Category.FLAT).mean() > 0.3  # a real share of the grid, not a sliver


@pytest.mark.parametrize("index", [0, 400, 800])
def test_the_demo_camera_places_the_road_on_every_frame(index):
    """`roadseg demo`'s camera (stream.geometry.synthetic_camera) is fixed at frame 0's horizon; the
    drive's pitch wobble must not move the road off where the renderer put it."""
    camera = synthetic_camera(DEMO_SOURCE)
    assert camera.ground is not None and not camera.distorted
    drive = parse_synthetic_spec(DEMO_SOURCE)
    assert _road_iou(SyntheticDrive(drive["seed"], drive["width"], drive["height"], drive["fps"]), index,
                     camera)[0] >= 0.9


def test_a_wrong_mounting_is_caught():
    """The check can fail: the same frame with the camera assumed 6 degrees yawed misplaces the road."""
    drive = SyntheticDrive(7, 1024, 512)
    wrong = _drive_camera(drive, 40, Pose(drive.camera(40).height_m, yaw_deg=6.0))
    assert _road_iou(drive, 40, wrong)[0] < 0.9


def test_cells_the_camera_cannot_see_are_unknown():
    drive = SyntheticDrive(7, 512, 256)
    camera = _drive_camera(drive, 0)
    grid = BevGrid(40, 20, 0.1)
    projector = BevProjector(camera, grid)
    cells = projector.project(np.full((256, 512), Category.FLAT, np.uint8))
    xs, ys = grid.centres()
    x, y = np.meshgrid(xs, ys)
    # Right under and just ahead of the camera is below the frame; far out to the sides is outside it.
    assert (cells[x < 1.0] == UNKNOWN).all()
    half_fov = np.arctan(drive.width / 2 / drive.camera(0).f)
    outside = np.abs(y) > np.tan(half_fov) * x + 0.2
    inside = np.abs(y) < np.tan(half_fov) * x - 0.2
    assert (cells[outside] == UNKNOWN).all()
    assert (cells[inside & (x > 6)] == Category.FLAT).all()
    # A blind region (the bonnet, from a static void mask) makes its cells unknown too.
    blind = np.zeros((256, 512), bool)
    blind[200:] = True
    hidden = BevProjector(camera, grid, lambda shape: blind).project(np.full((256, 512), 1, np.uint8))
    assert (hidden == UNKNOWN).sum() > (cells == UNKNOWN).sum()


def test_a_downscaled_layer_projects_like_the_full_one():
    drive = SyntheticDrive(7, 1024, 512)
    camera = _drive_camera(drive, 0)
    projector = BevProjector(camera, BevGrid())
    _image, truth = drive.render(0, noise=False)
    full, half = projector.project(truth), projector.project(np.ascontiguousarray(truth[::2, ::2]))
    both = (full != UNKNOWN) & (half != UNKNOWN)
    assert both.mean() > 0.5 and (full[both] == half[both]).mean() > 0.97


def test_grid_specs_and_display():
    grid = parse_grid("30x12@0.2")
    assert (grid.cells_x, grid.cells_y, grid.origin) == (150, 60, (0.0, -6.0))
    assert parse_grid("40x20") == BevGrid()
    for bad in ("40", "40x20@0", "0x20", "40x20@0.001"):
        with pytest.raises(ValueError, match="BEV grid"):
            parse_grid(bad)
    classes = np.full((60, 150), UNKNOWN, np.uint8)
    classes[20:40, :50] = Category.FLAT  # near, in the middle
    picture = bev_image(classes, PALETTE, cell_m=0.2, scale=1)
    assert picture.shape == (150, 60, 3)  # forward is up
    assert tuple(picture[140, 30]) == tuple(PALETTE[Category.FLAT]) and tuple(picture[10, 30]) != tuple(
        PALETTE[Category.FLAT])
