"""`roadseg bridge bench --quick`: every transport x size x encoding measured, sane numbers, the
results JSON and the Markdown table. No speed is asserted (measurements, not tests)."""

from __future__ import annotations

import json

import numpy as np

from benchmarks import bridge
from models.classes import NUM_CLASSES
from stream.cli import build_parser


def test_quick_run_through_the_cli_measures_every_combination(tmp_path, capsys):
    out = tmp_path / "bridge.json"
    argv = ["bridge", "bench", "--quick", "--out", str(out)]
    args = build_parser(argv).parse_args(argv)
    assert args.handler(args) == 0

    results = json.loads(out.read_text())
    rows = results["results"]
    combos = {(r["transport"], r["size"], r["encoding"]) for r in rows}
    assert len(rows) == len(combos) == 8
    assert combos == {(t, f"{w}x{h}", e.value) for t in bridge.TRANSPORTS for w, h in bridge.SIZES
                      for e in bridge.ENCODINGS}
    settings = results["settings"]
    for r in rows:
        assert r["masks_per_s"] > 0 and r["mb_per_s"] > 0
        assert r["throughput_masks"] == settings["throughput_masks"]
        assert r["latency_ms"]["samples"] == settings["paced_masks"]
        assert 0 < r["latency_p50_ms"] <= r["latency_p99_ms"] <= r["latency_ms"]["max"]
        assert 0 < r["paced_rate_hz"] <= settings["rate"]
        assert r["dropped"] == 0
        assert r["throughput_cores"]["publisher"] > 0 and r["throughput_cores"]["subscriber"] > 0
    for t in bridge.TRANSPORTS:
        for w, h in bridge.SIZES:
            raw, zlib = (next(r for r in rows if (r["transport"], r["size"], r["encoding"]) == (t, f"{w}x{h}", e.value))
                         for e in bridge.ENCODINGS)
            assert raw["message_bytes"] > w * h  # the whole mask plus topic and header
            assert zlib["message_bytes"] < raw["message_bytes"]
    assert results["command"].split()[0] == "roadseg"  # from sys.argv: the command as typed
    assert results["machine"]["cpu_count"] >= 1

    table = [line for line in capsys.readouterr().out.splitlines() if line.startswith(("| tcp", "| ipc"))]
    assert len(table) == 8


def test_masks_are_category_ids_at_each_size(tmp_path):
    masks, source = bridge.load_masks([(256, 128), (64, 32)], frames=2)
    for (w, h), group in masks.items():
        assert len(group) >= 1
        for mask in group:
            assert mask.shape == (h, w) and mask.dtype == np.uint8 and int(mask.max()) < NUM_CLASSES
    assert "cityscapes" in source or "synthetic" in source
    # Without the shared Cityscapes frames: the synthetic drive's truth.
    masks, source = bridge.load_masks([(128, 64)], frames=2, shared=tmp_path)
    assert source.startswith("synthetic") and len(masks[(128, 64)]) == 2
    assert all(m.shape == (64, 128) and int(m.max()) < NUM_CLASSES for m in masks[(128, 64)])
