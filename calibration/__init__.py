"""Camera calibration: intrinsics, undistortion, ground plane, bird's-eye view.

Reserved package: nothing is implemented here yet (see the project issues).
"""
