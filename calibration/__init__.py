"""Camera calibration: intrinsics, undistortion, ground plane, bird's-eye view.

An offline tool and a library the pipeline uses (it never imports :mod:`stream`):

* :mod:`calibration.camera`: the camera file (strict JSON, schema ``roadseg.camera`` v1, content hash);
* :mod:`calibration.intrinsics`: K and distortion from checkerboard or ChArUco images;
* :mod:`calibration.undistort`: undistortion maps computed once (``cv2.remap``, or ``grid_sample`` on a GPU);
* :mod:`calibration.ground`: the ground homography from the camera's pose or from point pairs (ISO 8855);
* :mod:`calibration.bev`: a per-pixel layer onto a grid of the road in metres (a precomputed lookup);
* :mod:`calibration.cli`: ``roadseg calibrate intrinsics | ground | show``.
"""
