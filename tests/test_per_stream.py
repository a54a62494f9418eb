"""``STREAM=PATH`` options share one parser: malformed and repeated items are refused by name."""

from __future__ import annotations

import pytest

from stream.per_stream import per_stream_paths
from stream.void_mask import VoidMaskError, parse_void_masks


def test_items_map_streams_to_paths():
    assert per_stream_paths(["a=x.png", "b=dir/y=1.png"], "--opt", "a=x.png") == {"a": "x.png", "b": "dir/y=1.png"}


@pytest.mark.parametrize("spec", ["x.png", "=x.png", "a="])
def test_a_malformed_item_is_named(spec):
    with pytest.raises(ValueError, match=rf"--opt '{spec}': expected STREAM=PATH, e.g. a=x.png"):
        per_stream_paths([spec], "--opt", "a=x.png")


def test_a_stream_given_twice_is_refused_with_the_callers_error(tmp_path):
    with pytest.raises(VoidMaskError, match="stream 'a' is given twice"):
        parse_void_masks(("a=one.png", "a=two.png"))
    with pytest.raises(VoidMaskError, match=r"void mask 'a=.*missing.png': no such file"):
        parse_void_masks((f"a={tmp_path / 'missing.png'}",))
