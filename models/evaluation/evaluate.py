"""``roadseg eval``: score a model against Cityscapes ground truth on the 8 categories.

Frames are decoded by a small thread pool a few frames ahead of the model, run
through the chosen inference backend (``--backend``: the engine that will be deployed,
made by :func:`models.backends.registry.create_backend` exactly as ``roadseg run`` makes
it) in batches, scored at the full label resolution and summed into ONE 8x8 confusion
matrix; every metric comes from that matrix (see :mod:`models.evaluation.metrics`). Only a
few frames are in memory at a time, plus the downscaled frames kept for the report panels.
Where the model has a road class, the drivable-road layer is scored too, into a 2x2 road vs
not-road matrix (see :mod:`models.evaluation.road`).
"""

from __future__ import annotations

import argparse
import logging
import re
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from models.classes import IGNORE, NUM_CLASSES, label_ids_to_categories, label_ids_to_road
from models.cli_args import int_at_least, size_arg
from models.datasets.cityscapes import (
    CITYSCAPES_IMAGE_SUFFIX,
    CITYSCAPES_TRUTH_SUFFIX,
    cityscapes_lister,
    cityscapes_truth_for,
    read_cityscapes_label_ids,
    read_rgb,
)
from models.drivable import road_mask
from models.errors import DatasetError, UnreadableImage
from models.evaluation import metrics
from models.evaluation.progress import progress as progress_reporter
from models.evaluation.result import TIMING_KEYS, EvalResult, PanelSample, finite_or_none
from models.evaluation.road import RoadReference, road_unavailable

if TYPE_CHECKING:
    from torch import nn

    from models.backends.base import BatchOutput, InferenceBackend
    from models.store.checkpoint import ModelCard

log = logging.getLogger(__name__)

DEFAULT_PANELS = 3
DEFAULT_DECODE_WORKERS = 2
PANEL_TILE_MAX_WIDTH = 640  # each of image | truth | prediction is downscaled to at most this width


class _Decoded(NamedTuple):
    position: int  # in the frame list
    name: str
    image: np.ndarray
    truth: np.ndarray
    road_truth: np.ndarray | None  # 1 road, 0 not, IGNORE; None when the road layer is not scored


def list_frames(root: Path, split: str, city: str | None, limit: int | None = None) -> list[tuple[Path, Path]]:
    """``(image, labelIds)`` pairs of a Cityscapes split, sorted; DatasetError names what is missing."""

    if not root.is_dir():
        raise DatasetError(f"cityscapes root {root}: no such folder")
    images = cityscapes_lister(root, split, city)()
    if not images:
        where = root / "leftImg8bit" / split / (city or "*")
        raise DatasetError(f"cityscapes {root}: no *{CITYSCAPES_IMAGE_SUFFIX} frames in {where}")
    if limit is not None:
        images = images[:limit]
    truth_for = cityscapes_truth_for(root, split)
    pairs = []
    for image in images:
        truth = truth_for(image)
        if truth is None:
            stem = image.name[: -len(CITYSCAPES_IMAGE_SUFFIX)]
            expected = root / "gtFine" / split / image.parent.name / f"{stem}{CITYSCAPES_TRUTH_SUFFIX}"
            raise DatasetError(
                f"cityscapes {root}: frame {image} has no ground truth (expected {expected}); "
                "eval needs gtFine labelIds for every frame"
            )
        pairs.append((image, truth))
    return pairs


def check_input_size(size: tuple[int, int], card: ModelCard) -> None:
    """ValueError explaining the divisor rule when ``size`` cannot be fed to the model."""
    problem = card.input.size_problem(*size)
    if problem:
        raise ValueError(f"--size: model {card.model_id}: {problem}")


def _make_backend(
    model_spec: str,
    loaded: tuple[nn.Module, ModelCard] | None,
    backend: str,
    size: tuple[int, int] | None,
    device: str,
    precision: str,
) -> tuple[InferenceBackend, nn.Module, ModelCard]:
    """The backend ``roadseg run --backend`` would run, made the same way (any name in
    :data:`models.backends.registry.BACKENDS`), the model it was made from, and the model card."""
    from models.backends.registry import create_backend
    from models.store.registry import load_model

    model, card = loaded if loaded is not None else load_model(model_spec)
    if size is not None:
        check_input_size(size, card)
    engine = create_backend(backend, model, card, device=device, precision=precision, input_size=size)
    return engine, model, card


def _decode(index: int, image_path: Path, truth_path: Path, road: bool) -> _Decoded:
    image = read_rgb(image_path)
    label_ids = read_cityscapes_label_ids(truth_path, image.shape[:2])
    road_truth = label_ids_to_road(label_ids) if road else None
    name = image_path.name.removesuffix(CITYSCAPES_IMAGE_SUFFIX)
    return _Decoded(index, name, image, label_ids_to_categories(label_ids), road_truth)


def _spread(count: int, picks: int) -> set[int]:
    """``picks`` frame indices spread evenly over ``count`` frames (first and last included)."""
    if picks <= 0 or count <= 0:
        return set()
    return set(np.linspace(0, count - 1, min(picks, count)).round().astype(int).tolist())


def _sample(item: _Decoded, prediction: np.ndarray, frame_cm: np.ndarray) -> PanelSample:
    import cv2

    height, width = item.truth.shape
    tile_w = min(width, PANEL_TILE_MAX_WIDTH)
    tile_h = max(1, round(height * tile_w / width))
    size = (tile_w, tile_h)
    return PanelSample(
        name=item.name,
        image=cv2.resize(item.image, size, interpolation=cv2.INTER_AREA),
        truth=cv2.resize(item.truth, size, interpolation=cv2.INTER_NEAREST),
        prediction=cv2.resize(prediction, size, interpolation=cv2.INTER_NEAREST),
        mean_iou=metrics.mean_iou(frame_cm),
        pixel_accuracy=metrics.pixel_accuracy(frame_cm),
    )


def evaluate(
    model_spec: str,
    root: Path,
    *,
    split: str = "val",
    city: str | None = None,
    size: tuple[int, int] | None = None,
    backend: str = "torch",
    device: str = "auto",
    precision: str = "auto",
    batch: int = 1,
    limit: int | None = None,
    progress: bool = True,
    panels: int = DEFAULT_PANELS,
    loaded: tuple[nn.Module, ModelCard] | None = None,
    decode_workers: int = DEFAULT_DECODE_WORKERS,
    road: bool = False,
) -> EvalResult:
    """Score ``model_spec`` (or an already ``loaded`` (model, card), e.g. during training, in
    which case ``model_spec`` is only a label) on a Cityscapes split.

    ``backend`` names the inference engine (``torch``, ``onnxruntime``, ...), which runs at
    ``device`` and ``precision`` as it would in ``roadseg run``. ``size`` is the model input
    (width, height), default the card's; masks are always scored at the label resolution.
    ``progress``: a bar on a terminal, else a line every few seconds on stderr. ``panels``
    frames, spread over the split, are kept downscaled for :func:`models.evaluation.report.write_report`.
    ``road``: also score the drivable-road layer where the model has one (``roadseg eval`` does
    unless ``--no-road``): the backend's own layer where it emits one (``provides_road``: torch,
    onnxruntime, openvino),
    else from a second, torch pass per batch; ``result.road_note`` says which, or why it was not.
    """
    if batch < 1:
        raise ValueError(f"batch must be at least 1, got {batch}")
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be at least 1, got {limit}")
    root = Path(root)
    frames = list_frames(root, split, city, limit)
    engine, model, card = _make_backend(model_spec, loaded, backend, size, device, precision)
    width, height = size or card.input.size
    score_road, road_reference, road_note = _road_source(model, card, engine, size, road)
    log.info("eval %s with %s on %s (%s), input %dx%d, %d frames of %s/%s%s, batch %d", card.model_id,
             engine.name, engine.device, engine.precision, width, height, len(frames), root, split,
             f"/{city}" if city else "", batch)
    engine.warmup((batch,))
    if road_reference is not None:
        road_reference.warmup((batch,))

    keep = _spread(len(frames), panels)
    cm = np.zeros((NUM_CLASSES, NUM_CLASSES), np.int64)
    road_cm = np.zeros((2, 2), np.int64)
    ignored = 0
    totals_ns = dict.fromkeys(TIMING_KEYS, 0)
    per_frame: list[dict[str, Any]] = []
    invalid: list[str] = []
    samples: list[PanelSample] = []
    depth = batch + 2 * decode_workers  # frames decoded ahead: bounds memory
    todo = iter(enumerate(frames))
    pending: deque[Future[_Decoded]] = deque()
    pool = ThreadPoolExecutor(max_workers=decode_workers, thread_name_prefix="roadseg-eval-decode")

    def top_up() -> None:
        while len(pending) < depth:
            nxt = next(todo, None)
            if nxt is None:
                return
            index, (image_path, truth_path) = nxt
            pending.append(pool.submit(_decode, index, image_path, truth_path, score_road))

    try:
        with progress_reporter(len(frames), progress) as bar:
            start = time.monotonic_ns()
            top_up()
            while pending:
                chunk: list[_Decoded] = []
                while pending and len(chunk) < batch:
                    wait_start = time.monotonic_ns()
                    try:
                        chunk.append(pending.popleft().result())
                    except UnreadableImage as exc:
                        raise DatasetError(f"eval cannot read {exc}") from exc
                    totals_ns["decode_wait"] += time.monotonic_ns() - wait_start
                    top_up()
                out = engine.infer([item.image for item in chunk])
                for key in ("preprocess", "inference", "postprocess"):
                    totals_ns[key] += round(getattr(out.timings, f"{key}_ms") * 1e6)
                preferred = None
                if road_reference is not None:
                    road_start = time.monotonic_ns()
                    preferred = road_reference.preferred([item.image for item in chunk])
                    totals_ns["road_layer"] += time.monotonic_ns() - road_start
                score_start = time.monotonic_ns()
                for i, (item, mask, valid) in enumerate(zip(chunk, out.masks, out.valid, strict=True)):
                    frame_cm = metrics.confusion_matrix(item.truth, mask)
                    cm += frame_cm
                    if item.road_truth is not None:
                        road_cm += metrics.road_confusion(item.road_truth, _road_layer(out, i, mask, preferred))
                    ignored += int(np.count_nonzero(item.truth == IGNORE))
                    per_frame.append({"name": item.name, "mean_iou": finite_or_none(metrics.mean_iou(frame_cm)),
                                      "pixel_accuracy": finite_or_none(metrics.pixel_accuracy(frame_cm))})
                    if not valid:
                        invalid.append(item.name)
                        log.warning("frame %s: the model produced non-finite logits", item.name)
                    if item.position in keep:
                        samples.append(_sample(item, mask, frame_cm))
                totals_ns["scoring"] += time.monotonic_ns() - score_start
                if bar is not None:
                    bar.update(len(chunk))
            # The road layer's reference pass is not the backend's speed: left out of images/s.
            elapsed_s = (time.monotonic_ns() - start - totals_ns["road_layer"]) / 1e9
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        if road_reference is not None:
            road_reference.close()

    count = len(frames)
    return EvalResult(
        model_spec=model_spec,
        model_id=card.model_id,
        backend=engine.name,
        card_input_size=(int(card.input.size[0]), int(card.input.size[1])),
        input_size=(int(width), int(height)),
        device=engine.device,
        precision=engine.precision,
        root=str(root),
        split=split,
        city=city,
        frames=count,
        batch=batch,
        confusion=cm,
        ignored_pixels=ignored,
        elapsed_s=elapsed_s,
        timing_ms={k: v / 1e6 / count for k, v in totals_ns.items()},
        per_frame=per_frame,
        invalid_frames=invalid,
        samples=samples,
        road_confusion=road_cm if score_road else None,
        road_note=road_note,
    )


def _road_source(
    model: nn.Module, card: ModelCard, engine: InferenceBackend, size: tuple[int, int] | None, wanted: bool
) -> tuple[bool, RoadReference | None, str]:
    """Whether the road layer is scored; the reference pass that supplies its margin (None when the
    backend emits the layer itself, or it is not scored); where it comes from, or why it is not scored."""
    if not wanted:
        return False, None, "road layer not scored (--no-road)"
    reason = road_unavailable(card, model)
    if reason is not None:
        return False, None, reason
    if getattr(engine, "provides_road", False):  # BackendBase.provides_road: it emits the layer itself
        return True, None, f"flat pixels where road outscores sidewalk; the {engine.name} {engine.device} " \
                           f"{engine.precision} backend's own road layer"
    reference = RoadReference(model, card, engine, size)
    return True, reference, f"flat pixels where road outscores sidewalk; margin from a torch {reference.device} " \
                            f"{reference.precision} pass"


def _road_layer(out: BatchOutput, i: int, mask: np.ndarray, preferred: list[np.ndarray] | None) -> np.ndarray:
    """Frame ``i``'s road layer: the backend's own, else its mask's flat pixels that the reference pass prefers."""
    if preferred is not None:
        return road_mask(mask, preferred[i])
    layer = out.road[i] if out.road is not None else None
    if layer is None:
        raise RuntimeError("the backend says it provides the road layer but returned none")
    return layer


def default_out_dir(model_spec: str, split: str, now: datetime | None = None) -> Path:
    """``runs/eval-<model>-<split>-<timestamp>`` (a checkpoint path contributes its file stem)."""
    name = Path(model_spec).stem if ("/" in model_spec or model_spec.endswith(".safetensors")) else model_spec
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-") or "model"
    stamp = (now or datetime.now()).strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"eval-{name}-{split}-{stamp}"


# --- command line -------------------------------------------------------------------------------


def add_subcommand(subparsers: Any) -> None:
    from models.backends.common import DEVICE_CHOICES, PRECISION_CHOICES
    from models.backends.registry import BACKEND_CHOICES

    p = subparsers.add_parser(
        "eval", help="score a model on Cityscapes ground truth (IoU, Dice, confusion)",
        description="Score a model, as the chosen backend runs it, on a Cityscapes split: per-category IoU "
                    "(void included and void ignored) and Dice, mean IoU (void as a class), Cityscapes category "
                    "IoU (void ignored), pixel accuracy, confusion matrix, speed. Zoo models get the metrics "
                    "recorded in their cached model card ('roadseg models info NAME').")
    p.add_argument("--model", required=True, help="built-in name, checkpoint path or smp:ARCH:ENC")
    p.add_argument("--cityscapes", required=True, type=Path, metavar="ROOT",
                   help="dataset root holding leftImg8bit/ and gtFine/")
    p.add_argument("--split", default="val", help="split folder (default val)")
    p.add_argument("--city", help="only this city")
    p.add_argument("--size", type=size_arg, metavar="WxH", help="model input size (default: the model's own)")
    p.add_argument("--backend", default="torch", choices=BACKEND_CHOICES,
                   help="inference engine to score, as 'roadseg run --backend' runs it (default torch)")
    p.add_argument("--device", default="auto", choices=DEVICE_CHOICES)
    p.add_argument("--precision", default="auto", choices=PRECISION_CHOICES)
    p.add_argument("--save-metrics", action=argparse.BooleanOptionalAction, default=None,
                   help="record the metrics in the model card: by default only for zoo models on a full "
                        "split; --save-metrics also for built-in models and checkpoint paths")
    p.add_argument("--batch", type=int_at_least(1), default=1, metavar="N", help="frames per inference batch")
    p.add_argument("--out", type=Path, metavar="DIR",
                   help="report folder (default runs/eval-<model>-<split>-<timestamp>)")
    p.add_argument("--panels", type=int_at_least(0), default=DEFAULT_PANELS, metavar="N",
                   help=f"image|truth|prediction PNGs to write (default {DEFAULT_PANELS})")
    p.add_argument("--limit", type=int_at_least(1), metavar="N", help="only the first N frames")
    p.add_argument("--road", action=argparse.BooleanOptionalAction, default=True,
                   help="also score the drivable-road layer (road IoU) of a model with a road class (default on; "
                        "the torch backend emits it, other backends take a second, torch, pass over each batch)")
    p.add_argument("-v", "--verbose", action="store_true")
    p.set_defaults(handler=run_eval)


def run_eval(args: argparse.Namespace) -> int:
    from models.evaluation.record import record_metrics, record_target
    from models.evaluation.report import format_table, write_report

    if args.out is not None and args.out.exists() and not args.out.is_dir():
        raise ValueError(f"--out {args.out}: exists and is not a folder")
    target = record_target(args.model, args.save_metrics, args.limit)
    before = target.stat() if target is not None else None  # the weights about to be measured
    result = evaluate(args.model, args.cityscapes, split=args.split, city=args.city, size=args.size,
                      backend=args.backend, device=args.device, precision=args.precision, batch=args.batch,
                      limit=args.limit, progress=True, panels=args.panels, road=args.road)
    out_dir = args.out or default_out_dir(args.model, args.split)
    try:
        write_report(result, out_dir, panels=args.panels)
    except OSError as exc:
        raise ValueError(f"cannot write the report to {out_dir}: {exc}") from exc
    print(format_table(result, out_dir), flush=True)
    if target is not None:
        key = record_metrics(target, result, unchanged_since=before)
        if key is not None:
            print(f"recorded in the model card of {target} as metrics.eval[{key!r}]", flush=True)
    return 0
