"""Read the send-time barcode that ``tests/rtsp_server.py`` burns into every frame.

The test RTSP server stamps each frame with ``time.monotonic_ns()`` taken just before it pushes the
frame into the encoder. CLOCK_MONOTONIC is shared by all processes on one host, so a reader on the
same machine gets the end-to-end latency of a frame (encode, RTP/RTSP, decode, its own buffering)
as ``time.monotonic_ns() - decode_stamp(frame)``, with no clock sync and no side channel.

Layout: MUST match ``tests/rtsp_server.py``, which renders it without numpy (the system Python
that runs the server may not have it); change both together. ``tests/test_rtsp_server.py`` renders
a frame with the server's code and decodes it here, so a mismatch fails a test.

* A grid of ``CELL`` x ``CELL`` px cells, ``ROWS`` rows of ``COLS`` cells, top-left corner at
  ``ORIGIN``. Cells are aligned to H.264's 16x16 macroblocks and black or white only, so the
  encoder codes each as one flat block: compression moves a cell's level by a few units, far from
  the threshold halfway between black and white.
* Each row starts with the ``GUARD`` pair (black, white). Their measured levels set the row's
  threshold and prove that a barcode is there at all: a photo or noise has no such contrast.
* The other ``DATA_COLS`` cells of each row, row-major and most significant bit first, carry the
  64-bit stamp then its CRC-16/CCITT-FALSE; white is 1.

A cell is read as the mean of its centre (``INSET`` px in from every edge, away from deblocking at
the block borders). A cell whose level sits near the threshold, or a CRC mismatch, makes the whole
frame unreadable: ``decode_stamp`` returns None rather than a wrong time.
"""

from __future__ import annotations

import binascii
import struct

import numpy as np

# --- layout (keep in step with tests/rtsp_server.py) ---------------------------------------------
CELL = 16  # px; one H.264 macroblock
ORIGIN = (CELL, CELL)  # (x, y) of the grid's top-left cell
ROWS = 5
GUARD = (0, 1)  # per row: black then white reference cells
DATA_COLS = 16
COLS = len(GUARD) + DATA_COLS
STAMP_BITS = 64
CRC_BITS = 16

# --- reading thresholds ---------------------------------------------------------------------------
INSET = 4  # px ignored at each cell edge, where deblocking and chroma subsampling blur the levels
MIN_CONTRAST = 96.0  # a row's white guard must be this much brighter than its black guard (of 255)
MIN_MARGIN = 0.25  # every cell must sit this fraction of the contrast away from the threshold

BLACK = 0
WHITE = 255
GREY = 128  # the quiet zone around the grid


def crc16_ccitt(data: bytes) -> int:
    """CRC-16/CCITT-FALSE (poly 0x1021, init 0xFFFF), the same function as the server's."""
    return binascii.crc_hqx(data, 0xFFFF)


def _bits(ns: int) -> np.ndarray:
    """ROWS x DATA_COLS payload bits for ``ns``: the 64-bit stamp then its CRC, MSB first."""
    payload = struct.pack(">Q", ns & 0xFFFF_FFFF_FFFF_FFFF)
    word = (int.from_bytes(payload, "big") << CRC_BITS) | crc16_ccitt(payload)
    total = STAMP_BITS + CRC_BITS
    return np.array([(word >> (total - 1 - i)) & 1 for i in range(total)], dtype=np.uint8).reshape(ROWS, DATA_COLS)


def encode_stamp(width: int, height: int, ns: int) -> np.ndarray:
    """An HxWx3 uint8 RGB frame, grey with the barcode of ``ns``; for tests of the reader."""
    x0, y0 = ORIGIN
    if width < x0 + COLS * CELL or height < y0 + ROWS * CELL:
        raise ValueError(f"{width}x{height} is too small for the {COLS * CELL}x{ROWS * CELL} px barcode")
    cells = np.concatenate([np.tile(np.array(GUARD, dtype=np.uint8), (ROWS, 1)), _bits(ns)], axis=1)
    grid = np.where(cells == 1, WHITE, BLACK).astype(np.uint8).repeat(CELL, axis=0).repeat(CELL, axis=1)
    frame = np.full((height, width, 3), GREY, dtype=np.uint8)
    frame[y0:y0 + ROWS * CELL, x0:x0 + COLS * CELL] = grid[..., None]
    return frame


def cell_levels(rgb: np.ndarray) -> np.ndarray:
    """ROWS x COLS mean grey level of each cell's centre."""
    x0, y0 = ORIGIN
    grid = rgb[y0:y0 + ROWS * CELL, x0:x0 + COLS * CELL]
    cells = grid.reshape(ROWS, CELL, COLS, CELL, -1)[:, INSET:CELL - INSET, :, INSET:CELL - INSET]
    return cells.mean(axis=(1, 3, 4), dtype=np.float64)


def decode_stamp(rgb: np.ndarray) -> int | None:
    """The ``time.monotonic_ns()`` stamped into ``rgb`` (HxWx3 uint8), or None if it cannot be read.

    None covers: frame too small, no barcode (guards without contrast), any ambiguous cell, and a
    CRC mismatch. A stamp that is returned is therefore the one the server sent.
    """
    x0, y0 = ORIGIN
    if rgb.ndim != 3 or rgb.shape[0] < y0 + ROWS * CELL or rgb.shape[1] < x0 + COLS * CELL:
        return None
    levels = cell_levels(rgb)
    black = levels[:, GUARD.index(0)]
    white = levels[:, GUARD.index(1)]
    contrast = white - black
    if np.any(contrast < MIN_CONTRAST):
        return None
    threshold = ((black + white) / 2)[:, None]
    data = levels[:, len(GUARD):]
    if np.any(np.abs(data - threshold) < MIN_MARGIN * contrast[:, None]):
        return None
    word = 0
    for bit in (data > threshold).ravel():
        word = (word << 1) | int(bit)
    stamp, crc = word >> CRC_BITS, word & ((1 << CRC_BITS) - 1)
    if crc16_ccitt(struct.pack(">Q", stamp)) != crc:
        return None
    return stamp
