"""A recorded split replayed through the pipeline reports the IoU that ``roadseg eval`` reports."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from models.evaluation.evaluate import evaluate
from stream.batcher import BatchConfig
from stream.config import PipelineConfig
from tests.conftest import require_shared
from tests.pipeline_helpers import running

FRAMES = ("frankfurt_000000_001016", "frankfurt_000000_002963")


def two_frame_cityscapes(root: Path, tmp: Path) -> Path:
    """A Cityscapes-layout folder of links to two shared val frames (nothing is copied)."""
    for kind, suffix in (("leftImg8bit", "_leftImg8bit.png"), ("gtFine", "_gtFine_labelIds.png")):
        folder = tmp / kind / "val" / "frankfurt"
        folder.mkdir(parents=True)
        for stem in FRAMES:
            (folder / f"{stem}{suffix}").symlink_to(root / kind / "val" / "frankfurt" / f"{stem}{suffix}")
    return tmp


async def test_replayed_dabnet_iou_equals_eval(dabnet_checkpoint, tmp_path):
    root = two_frame_cityscapes(require_shared("cityscapes"), tmp_path / "cs")
    result = await asyncio.to_thread(
        evaluate, str(dabnet_checkpoint), root, precision="fp32", progress=False, panels=0
    )
    config = PipelineConfig(sources=(f"cityscapes:{root}:val",), model=str(dabnet_checkpoint), precision="fp32",
                            zmq_address=None, viewer=None, stats_interval_s=0,
                            batch=BatchConfig(max_batch=1, max_wait_ms=0))
    async with running(config) as (_, task):
        summary = await asyncio.wait_for(task, 300)
    assert summary["frames"] == 2
    assert summary["iou"]["category_iou"] == pytest.approx(result.category_iou, abs=1e-9)
    assert summary["iou"]["mean_iou"] == pytest.approx(result.mean_iou, abs=1e-9)
    assert result.category_iou > 0.87  # the real weights, not a broken import
