"""argparse value types shared by every ``roadseg`` subcommand (no heavy imports here)."""

from __future__ import annotations

import argparse


def size_arg(text: str) -> tuple[int, int]:
    """``WIDTHxHEIGHT`` -> (width, height), both positive."""
    try:
        width, height = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT, got {text!r}") from None
    if width < 1 or height < 1:
        raise argparse.ArgumentTypeError(f"width and height must be positive, got {text!r}")
    return width, height


def positive_float(text: str) -> float:
    """A number > 0 (rates, durations)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value > 0:  # also rejects nan
        raise argparse.ArgumentTypeError(f"must be > 0, got {text!r}")
    return value
