"""``roadseg calibrate intrinsics | ground | show``: write and inspect camera files.

* ``intrinsics --images DIR --board 9x6 --square 0.025 --out CAMERA.json``: K and distortion from
  board images; the rejected images are listed with their reason; a PNG of the reprojection errors
  is written beside the camera file (``--plot`` elsewhere).
* ``ground CAMERA.json --height 1.3 --pitch 2.5 [--roll R --yaw Y --x X --y Y]`` or
  ``ground CAMERA.json --points PAIRS.txt``: the ground homography, written into the camera file.
* ``show CAMERA.json [--size WxH]``: what the file holds, its hash, and whether it fits a stream size.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from calibration.camera import DISTORTION_MODELS
from models.cli_args import size_arg

HELP = "calibrate a camera: intrinsics from board images, the ground plane (camera files for --camera)"


def add_subcommand(subparsers: Any) -> None:
    calibrate = subparsers.add_parser("calibrate", help=HELP, description=HELP)
    calibrate.set_defaults(verbose=False)
    sub = calibrate.add_subparsers(dest="calibrate_command", required=True)

    intrinsics = sub.add_parser("intrinsics", help="K and lens distortion from checkerboard or ChArUco images")
    intrinsics.add_argument("--images", required=True, type=Path, metavar="DIR", help="folder of board images")
    intrinsics.add_argument("--board", required=True, metavar="COLSxROWS",
                            help="checkerboard inner corners (9x6 for a board of 10x7 squares), or "
                                 "charuco:COLSxROWS squares")
    intrinsics.add_argument("--square", required=True, type=float, metavar="M", help="square side in metres")
    intrinsics.add_argument("--marker", type=float, metavar="M", help="ChArUco marker side in metres")
    intrinsics.add_argument("--dictionary", default="DICT_4X4_50", help="ChArUco ArUco dictionary (default "
                                                                        "DICT_4X4_50)")
    intrinsics.add_argument("--model", default="plumb_bob", choices=tuple(DISTORTION_MODELS),
                            help="distortion model (ROS names): plumb_bob = k1 k2 p1 p2 k3 (default), "
                                 "rational_polynomial = 8 coefficients, for wide-angle lenses (to about 120 "
                                 "degrees), equidistant = fisheye k1 k2 k3 k4 (OpenCV cv2.fisheye), for "
                                 "140-190 degree dashcams")
    intrinsics.add_argument("--rectify-alpha", type=float, metavar="A",
                            help="rectified camera: 0 keeps only valid pixels, 1 keeps every source pixel "
                                 "(OpenCV getOptimalNewCameraMatrix); default: the same K")
    intrinsics.add_argument("--out", required=True, type=Path, metavar="CAMERA.json")
    intrinsics.add_argument("--plot", type=Path, metavar="PNG",
                            help="reprojection error plot (default: beside --out, NAME.errors.png)")
    intrinsics.add_argument("--force", action="store_true", help="replace an existing camera file")
    intrinsics.set_defaults(handler=run_intrinsics)

    ground = sub.add_parser("ground", help="the ground plane (homography to metres, ISO 8855 vehicle frame), "
                                           "written into the camera file")
    ground.add_argument("camera", type=Path, metavar="CAMERA.json")
    how = ground.add_mutually_exclusive_group(required=True)
    how.add_argument("--height", type=float, metavar="M", help="camera height above the road, metres")
    how.add_argument("--points", metavar="FILE",
                     help="4+ lines 'u v x y': a raw image pixel and its ground point in metres (x forward, y left)")
    ground.add_argument("--pitch", type=float, default=0.0, metavar="DEG", help="positive looks down (default 0)")
    ground.add_argument("--roll", type=float, default=0.0, metavar="DEG", help="positive lowers the right side")
    ground.add_argument("--yaw", type=float, default=0.0, metavar="DEG", help="positive turns left")
    ground.add_argument("--x", type=float, default=0.0, metavar="M", help="camera ahead of the vehicle origin")
    ground.add_argument("--y", type=float, default=0.0, metavar="M", help="camera left of the vehicle origin")
    ground.add_argument("--rectified-points", action="store_true",
                        help="--points pixels are of rectified (undistorted) images, not raw ones")
    ground.add_argument("--out", type=Path, metavar="CAMERA.json", help="write here (default: in place)")
    ground.set_defaults(handler=run_ground)

    show = sub.add_parser("show", help="print a camera file's contents and hash; --size checks a stream size")
    show.add_argument("camera", type=Path, metavar="CAMERA.json")
    show.add_argument("--size", type=size_arg, metavar="WxH", help="fail (exit 2) unless the camera delivers WxH "
                                                                   "frames")
    show.set_defaults(handler=run_show)


def run_intrinsics(args: argparse.Namespace) -> int:
    import cv2
    from tqdm import tqdm

    from calibration.intrinsics import calibrate, error_plot, list_images, parse_board

    if args.out.exists() and not args.force:
        raise ValueError(f"{args.out} exists: pass --force to replace it (a camera file may hold a ground plane)")
    board = parse_board(args.board, args.square, args.marker, args.dictionary)
    images = list_images(args.images)

    def progress(paths: Any) -> Any:
        return tqdm(paths, desc="boards", unit="image", file=sys.stderr, disable=None)

    result = calibrate(images, board, model=args.model, rectify_alpha=args.rectify_alpha, progress=progress)
    camera = result.camera
    camera.save(args.out)
    plot = args.plot or args.out.with_name(args.out.stem + ".errors.png")
    if not cv2.imwrite(str(plot), error_plot(result)):
        raise ValueError(f"cannot write the error plot {plot}")
    assert camera.calibration is not None
    print(f"{len(result.accepted)} of {len(images)} images used; RMS reprojection error "
          f"{camera.calibration['rms_px']:.3f} px")
    for name, reason in result.rejected:
        print(f"rejected {name}: {reason}")
    _print_camera(camera)
    print(f"wrote {args.out} and {plot}")
    return 0


def run_ground(args: argparse.Namespace) -> int:
    from calibration.camera import Pose, load_camera
    from calibration.ground import ground_from_points, ground_from_pose, read_point_pairs

    camera = load_camera(args.camera)
    if args.points is not None:
        image, ground = read_point_pairs(args.points)
        plane = ground_from_points(camera, image, ground, rectified=args.rectified_points)
        print(f"ground plane from {len(image)} point pairs: RMS {plane.rms_m:.3f} m")
    else:
        pose = Pose(args.height, args.pitch, args.roll, args.yaw, args.x, args.y)
        plane = ground_from_pose(camera, pose)
        print(f"ground plane from the pose: height {pose.height_m} m, pitch {pose.pitch_deg}, roll {pose.roll_deg}, "
              f"yaw {pose.yaw_deg} degrees, at x {pose.x_m} m, y {pose.y_m} m")
    camera = camera.with_ground(plane)
    out = args.out or args.camera
    camera.save(out)
    _print_horizon(camera)
    print(f"wrote {out} ({camera.hash})")
    return 0


def run_show(args: argparse.Namespace) -> int:
    from calibration.camera import load_camera

    camera = load_camera(args.camera)
    _print_camera(camera)
    if camera.ground is not None:
        print(f"ground plane: {camera.ground.method}" + (f", RMS {camera.ground.rms_m:.3f} m"
                                                          if camera.ground.rms_m is not None else ""))
        _print_horizon(camera)
    else:
        print("ground plane: none (roadseg calibrate ground)")
    print(f"hash: {camera.hash}")
    if args.size:
        width, height = args.size
        camera.check_size(width, height, "the stream")
        print(f"fits {width}x{height} frames")
    return 0


def _print_camera(camera: Any) -> None:
    K = camera.K
    print(f"image {camera.width}x{camera.height}; fx {K[0, 0]:.2f} fy {K[1, 1]:.2f} cx {K[0, 2]:.2f} "
          f"cy {K[1, 2]:.2f}; {camera.distortion_model} {' '.join(f'{c:.5f}' for c in camera.distortion)}")


def _print_horizon(camera: Any) -> None:
    import numpy as np

    from calibration.ground import ground_to_image

    for distance in (5.0, 10.0, 20.0, 40.0):
        uv, front = ground_to_image(camera.ground, np.array([[distance, 0.0]]))
        where = f"row {uv[0, 1]:.1f}, column {uv[0, 0]:.1f}" if front[0] else "not in front of the camera"
        print(f"  road {distance:>4.0f} m ahead: {where}")
