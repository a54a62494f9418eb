"""Per-frame post-processing: void masks, IoU counts, payload only when published."""

import zlib

import numpy as np

from decision_bridge.schema import Encoding
from models.backends.base import BackendTimings
from stream.frame import Frame
from stream.stages import Inferred, encode_result


def inferred(mask: np.ndarray, truth: np.ndarray | None) -> Inferred:
    frame = Frame("s", 0, 0, 0, np.zeros((*mask.shape, 3), np.uint8), truth)
    return Inferred(frame, mask, True, 1, 0, 0, BackendTimings(0.0, 0.0, 0.0))


def test_payload_is_the_encoded_mask_when_published():
    mask = np.array([[1, 2], [3, 7]], np.uint8)
    encoded = encode_result(inferred(mask.copy(), None), Encoding.ZLIB)
    assert zlib.decompress(encoded.payload) == mask.tobytes()
    assert encoded.confusion is None


def test_nothing_is_encoded_without_a_publisher_but_iou_is_still_counted():
    mask = np.array([[1, 1], [2, 2]], np.uint8)
    truth = np.array([[1, 2], [2, 2]], np.uint8)
    encoded = encode_result(inferred(mask, truth), None)
    assert encoded.payload == b""
    assert encoded.confusion is not None
    assert encoded.confusion[1, 1] == 1 and encoded.confusion[2, 1] == 1 and encoded.confusion[2, 2] == 2
