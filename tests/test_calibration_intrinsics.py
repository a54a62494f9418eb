"""Intrinsic calibration on boards rendered through a known camera (tests/calibration_render.py):
K recovered within 1 %, bad images rejected with their reason, ChArUco boards too, the error plot."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from calibration.intrinsics import Board, CalibrationError, calibrate, error_plot, parse_board
from tests.calibration_render import (
    BOARD,
    SIZE,
    TRUE_DIST,
    TRUE_K,
    VIEWS,
    View,
    board_pose,
    checker_texture,
    render_plane,
    write_board_images,
)


@pytest.fixture(scope="module")
def boards(tmp_path_factory):
    return write_board_images(tmp_path_factory.mktemp("boards"))


@pytest.fixture(scope="module")
def calibrated(boards):
    return calibrate(boards, BOARD)


def _relative_errors(K: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    names = {"fx": (0, 0), "fy": (1, 1), "cx": (0, 2), "cy": (1, 2)}
    return {name: abs(K[i] / truth[i] - 1) for name, i in names.items()}


def test_focal_lengths_and_principal_point_recovered_within_one_percent(calibrated):
    camera = calibrated.camera
    errors = _relative_errors(camera.K, TRUE_K)
    assert max(errors.values()) < 0.01, errors
    assert camera.size == SIZE
    assert camera.distortion_model == "plumb_bob" and camera.distortion.shape == (5,)
    assert camera.calibration is not None and camera.calibration["rms_px"] < 0.3
    assert len(camera.calibration["images"]) == len(VIEWS) and not calibrated.rejected
    assert all(image["rms_px"] < 0.5 for image in camera.calibration["images"])
    # The lens is barrel-shaped (k1 < 0) as rendered.
    assert camera.distortion[0] < -0.1


def test_unusable_images_are_rejected_with_their_reason(boards, tmp_path):
    folder = tmp_path / "mixed"
    folder.mkdir()
    for path in boards[:5]:
        (folder / path.name).write_bytes(path.read_bytes())
    (folder / "blank.png").write_bytes(cv2.imencode(".png", np.full((SIZE[1], SIZE[0]), 128, np.uint8))[1].tobytes())
    (folder / "small.png").write_bytes(cv2.imencode(".png", np.zeros((100, 200), np.uint8))[1].tobytes())
    (folder / "broken.png").write_bytes(b"not a png")
    result = calibrate(sorted(folder.iterdir()), BOARD)
    reasons = dict(result.rejected)
    assert set(reasons) == {"blank.png", "small.png", "broken.png"}
    assert "no 9x6 checkerboard" in reasons["blank.png"]
    assert "200x100 differs" in reasons["small.png"]
    assert "not a readable image" in reasons["broken.png"]
    assert len(result.accepted) == 5
    assert result.camera.calibration is not None
    assert {r["file"] for r in result.camera.calibration["rejected"]} == set(reasons)


def test_too_few_boards_is_an_error_listing_the_rejections(boards, tmp_path):
    (tmp_path / "blank.png").write_bytes(cv2.imencode(".png", np.full((60, 80), 128, np.uint8))[1].tobytes())
    with pytest.raises(CalibrationError, match=r"2 usable board image\(s\), at least 3(.|\n)*rejected blank.png"):
        calibrate([*boards[:2], tmp_path / "blank.png"], BOARD)


def test_charuco_board_calibrates_too(tmp_path):
    """OpenCV >= 4.7 has ChArUco in its main modules (opencv-python-headless, no contrib)."""
    board = Board("charuco", 10, 7, 0.025, 0.019)
    px = 96
    texture = np.pad(board.charuco().generateImage((board.cols * px, board.rows * px), marginSize=0, borderBits=1),
                     px // 2, constant_values=255)
    metres = board.square_m / px
    # ChArUco corners start one square in from the board's corner: shift onto the checkerboard's origin.
    to_plane = np.array([[metres, 0, (0.5 - px // 2) * metres - board.square_m],
                         [0, metres, (0.5 - px // 2) * metres - board.square_m], [0, 0, 1]])
    K2 = TRUE_K.copy()  # markers need more pixels than corners: twice the resolution
    K2[:2, :2] *= 2
    K2[:2, 2] = (K2[:2, 2] + 0.5) * 2 - 0.5
    size = (SIZE[0] * 2, SIZE[1] * 2)
    paths = []
    for i, view in enumerate(VIEWS):
        at = View((view.u + 0.5) * 2 - 0.5, (view.v + 0.5) * 2 - 0.5, *view[2:])
        rvec, tvec = board_pose(at, K=K2)
        paths.append(tmp_path / f"charuco_{i:02d}.png")
        cv2.imwrite(str(paths[-1]), render_plane(texture, to_plane, rvec, tvec, K=K2, size=size, seed=i))
    result = calibrate(paths, board)
    errors = _relative_errors(result.camera.K, K2)
    assert max(errors.values()) < 0.01, errors
    assert result.camera.calibration is not None
    assert result.camera.calibration["board"]["kind"] == "charuco"


def test_error_plot_is_an_image(calibrated):
    plot = error_plot(calibrated)
    assert plot.ndim == 3 and plot.shape[2] == 3 and plot.dtype == np.uint8
    assert (plot != 255).any()


def test_board_specs():
    assert parse_board("9x6", 0.025) == Board("checkerboard", 9, 6, 0.025)
    assert parse_board("charuco:5x7", 0.04, 0.03).kind == "charuco"
    for bad, match in (("9", "COLSxROWS"), ("1x6", "at least 2x2"), ("charuco:5x7", "marker size")):
        with pytest.raises(ValueError, match=match):
            parse_board(bad, 0.025)
    with pytest.raises(ValueError, match="square size"):
        parse_board("9x6", 0)


def test_the_renderer_matches_project_points():
    """The test's own camera: corners found in a render lie where cv2.projectPoints puts them."""
    texture, to_plane = checker_texture()
    rvec, tvec = board_pose(VIEWS[3])
    image = render_plane(texture, to_plane, rvec, tvec, noise=0)
    found, corners = cv2.findChessboardCorners(image, (BOARD.cols, BOARD.rows))
    assert found
    corners = cv2.cornerSubPix(image, corners, (5, 5), (-1, -1), (cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT,
                                                                 100, 1e-4)).reshape(-1, 2)
    truth, _ = cv2.projectPoints(BOARD.object_points(), rvec, tvec, TRUE_K, TRUE_DIST)
    truth = truth.reshape(-1, 2)
    nearest = np.linalg.norm(corners[:, None] - truth[None], axis=2).min(axis=1)
    assert nearest.max() < 0.15
