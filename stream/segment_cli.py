"""``roadseg segment IMAGE... [--out DIR]``: segment image files offline, as ``POST /api/segment`` does.

Loads the model once (no live pipeline, no sockets), then per image: decode, one
``backend.infer`` call at the model's input size with the mask returned at the image's size,
and one JSON line on stdout (size, class area fractions, timings, and the IoU when a label
matched). With ``--out DIR`` it also writes ``<stem>_mask.png`` (indexed-colour PNG whose
pixel values are the category ids) and ``<stem>_overlay.jpg`` (``--format`` picks: ``palette``
(= ``png``), ``raw`` (``<stem>_ids.png``, 8-bit grey ids), ``overlay``; ``json``: no files).

``--label FILE`` scores one image against that label; ``--label DIR`` finds each Cityscapes
frame's ``<name>_gtFine_labelIds.png`` (``_gtFine_labelTrainIds.png`` with ``--label-format
trainIds``) anywhere under DIR; images without one are described without IoU.

Every path is checked before the model loads (exists, is a whole JPEG or PNG within the pixel
limits, label the image's size): a bad one fails in well under a second, naming the file
(exit 2).
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from models.cli_args import size_arg
from models.datasets.cityscapes import CITYSCAPES_IMAGE_SUFFIX, CITYSCAPES_TRUTH_SUFFIX
from web_viewer.segmentation import (
    LABEL_FORMATS,
    TRAIN_IDS,
    CorruptImage,
    backend_timings_ms,
    decode_image,
    decode_label,
    describe,
    inspect_image,
    label_format_for,
    mask_png,
    overlay_jpeg,
    score,
    segment_one,
)

log = logging.getLogger(__name__)

CITYSCAPES_TRAIN_TRUTH_SUFFIX = "_gtFine_labelTrainIds.png"
FORMAT_CHOICES = ("png", "palette", "raw", "overlay", "json")
DEFAULT_FORMATS = ("palette", "overlay")
OUTPUT_SUFFIX = {"palette": "_mask.png", "raw": "_ids.png", "overlay": "_overlay.jpg"}


@dataclass(frozen=True, slots=True)
class Job:
    image: Path
    label: Path | None
    label_format: str


def add_subcommand(subparsers: Any) -> None:
    from models.backends.common import DEVICE_CHOICES, PRECISION_CHOICES
    from models.backends.registry import BACKEND_CHOICES

    p = subparsers.add_parser(
        "segment", help="segment image files: masks, overlays, class fractions, IoU",
        description="Segment JPEG/PNG files with a model, as the viewer's POST /api/segment does: one JSON line "
                    "per image on stdout; with --out, a palette mask PNG and an overlay JPEG per image.")
    p.add_argument("images", nargs="+", type=Path, metavar="IMAGE", help="JPEG or PNG files")
    p.add_argument("--out", type=Path, metavar="DIR", help="write <stem>_mask.png and <stem>_overlay.jpg here")
    p.add_argument("--format", dest="formats", action="append", choices=FORMAT_CHOICES, metavar="FORMAT",
                   help="files to write to --out (repeatable): png|palette (<stem>_mask.png), raw (<stem>_ids.png), "
                        "overlay (<stem>_overlay.jpg), json (none: the JSON lines only); default palette + overlay")
    p.add_argument("--model", default="demo", help="built-in name, zoo name or checkpoint path (default demo)")
    p.add_argument("--backend", default="torch", choices=BACKEND_CHOICES)
    p.add_argument("--device", default="auto", choices=DEVICE_CHOICES)
    p.add_argument("--precision", default="auto", choices=PRECISION_CHOICES)
    p.add_argument("--size", type=size_arg, metavar="WxH", help="model input size (default: the model's own)")
    p.add_argument("--label", type=Path, metavar="LABEL_OR_DIR",
                   help="ground truth: a label PNG for the one IMAGE, or a folder (a gtFine tree) searched for "
                        "each Cityscapes frame's <name>_gtFine_labelIds.png")
    p.add_argument("--label-format", choices=LABEL_FORMATS, default=None,
                   help="ids in the label: labelIds (Cityscapes, default), trainIds (default for *labelTrainIds* "
                        "files), categories (roadseg's 8)")
    p.add_argument("-v", "--verbose", action="store_true")
    p.set_defaults(handler=run_segment)


def run_segment(args: argparse.Namespace) -> int:
    formats = _formats(args.formats)
    if args.formats and not args.out and formats:
        raise ValueError("--format picks the files written to --out; give --out DIR")
    jobs = plan(args.images, args.label, args.label_format)
    out_dir = _out_dir(args.out) if args.out and formats else None
    backend = _load_backend(args)
    try:
        for job in jobs:
            print(json.dumps(segment_file(backend, job, out_dir, formats), separators=(",", ":")), flush=True)
    finally:
        backend.close()
    return 0


def _formats(chosen: list[str] | None) -> tuple[str, ...]:
    names = {"palette" if name == "png" else name for name in (chosen or DEFAULT_FORMATS)}
    return tuple(name for name in OUTPUT_SUFFIX if name in names)


def plan(images: list[Path], label: Path | None, label_format: str | None) -> list[Job]:
    """Every image and its label, checked (headers only) before any model loads; ValueError naming
    the first bad file."""
    sizes = {path: _check_file(path, "image") for path in images}
    stems: dict[str, Path] = {}
    for path in images:
        if path.stem in stems and stems[path.stem] != path:
            raise ValueError(f"{stems[path.stem]} and {path} have the same name: their outputs would collide; "
                             "segment them in separate runs")
        stems[path.stem] = path
    labels: dict[Path, Path | None] = dict.fromkeys(images)
    if label is not None:
        if label.is_dir():
            labels = _find_labels(images, label, label_format)
        elif len(set(images)) != 1:
            raise ValueError(f"--label {label} is one file for {len(set(images))} images; give one IMAGE, or a "
                             "folder (a gtFine tree) to find each Cityscapes frame's label in")
        else:
            labels = {images[0]: label}
    jobs = []
    for path in images:
        truth = labels[path]
        if truth is not None:
            width, height = _check_file(truth, "label")
            if (width, height) != sizes[path]:
                raise CorruptImage(f"label {truth}: {width}x{height} pixels, image {path} "
                                   f"{sizes[path][0]}x{sizes[path][1]}; they must match")
        jobs.append(Job(path, truth, label_format_for(truth.name if truth else None, label_format)))
    return jobs


def _check_file(path: Path, what: str) -> tuple[int, int]:
    if not path.is_file():
        raise ValueError(f"{what} {path}: {'a folder, not a file' if path.is_dir() else 'no such file'}")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ValueError(f"{what} {path}: cannot read it ({exc.strerror or exc})") from exc
    info = inspect_image(data, f"{what} {path}")
    if what == "label" and info.kind != "png":
        raise CorruptImage(f"label {path}: a label must be a PNG of ids (Cityscapes *_gtFine_labelIds.png)")
    return info.width, info.height


def _find_labels(images: list[Path], folder: Path, label_format: str | None) -> dict[Path, Path | None]:
    """Each Cityscapes frame's ``<name>_gtFine_labelIds.png`` (labelTrainIds with ``--label-format trainIds``)
    anywhere under ``folder``."""
    suffix = CITYSCAPES_TRAIN_TRUTH_SUFFIX if label_format == TRAIN_IDS else CITYSCAPES_TRUTH_SUFFIX
    found = {path.name[: -len(suffix)]: path for path in sorted(folder.rglob(f"*{suffix}"))}
    labels: dict[Path, Path | None] = {}
    for image in images:
        name = image.name.removesuffix(CITYSCAPES_IMAGE_SUFFIX) if image.name.endswith(CITYSCAPES_IMAGE_SUFFIX) \
            else image.stem
        labels[image] = found.get(name)
        if labels[image] is None:
            log.info("no %s%s under %s: %s is described without IoU", name, suffix, folder, image)
    return labels


def _out_dir(out: Path) -> Path:
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out}: exists and is not a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ValueError(f"--out {out}: cannot create it ({exc.strerror or exc})") from exc
    return out


def _load_backend(args: argparse.Namespace) -> Any:
    from models.backends.registry import create_backend
    from models.evaluation.evaluate import check_input_size
    from models.store.registry import load_model
    from stream.cli import _check_model_name

    _check_model_name(args.model)
    model, card = load_model(args.model)
    if args.size is not None:
        check_input_size(args.size, card)
    backend = create_backend(args.backend, model, card, device=args.device, precision=args.precision,
                             input_size=args.size)
    width, height = args.size or card.input.size
    log.info("model %s: %s backend on %s (%s), input %dx%d", card.model_id, backend.name, backend.device,
             backend.precision, width, height)
    return backend


def segment_file(backend: Any, job: Job, out_dir: Path | None, formats: tuple[str, ...]) -> dict[str, Any]:
    """Segment one file, write its outputs, return its JSON description."""
    start = time.monotonic_ns()
    data = job.image.read_bytes()
    read_done = time.monotonic_ns()
    image = decode_image(data, f"image {job.image}")
    truth = None
    if job.label is not None:
        truth = decode_label(job.label.read_bytes(), f"label {job.label}", image.shape[:2], job.label_format)
    decoded = time.monotonic_ns()
    seg = segment_one(backend, image)
    segmented = time.monotonic_ns()
    iou = {**score(truth, seg.mask), "label_format": job.label_format} if truth is not None else None
    scored = time.monotonic_ns()
    outputs: dict[str, str] = {}
    if out_dir is not None:
        for name in formats:
            path = out_dir / f"{job.image.stem}{OUTPUT_SUFFIX[name]}"
            path.write_bytes(overlay_jpeg(image, seg.mask) if name == "overlay"
                             else mask_png(seg.mask, palette=name == "palette"))
            outputs[name] = str(path)
    done = time.monotonic_ns()
    timings = {"read": (read_done - start) / 1e6, "decode": (decoded - read_done) / 1e6,
               **backend_timings_ms(seg), "model": (segmented - decoded) / 1e6,
               "score": (scored - segmented) / 1e6, "write": (done - scored) / 1e6, "total": (done - start) / 1e6}
    extra: dict[str, Any] = {"image": str(job.image), "label": str(job.label) if job.label else None}
    if outputs:
        extra["outputs"] = outputs
    return describe(seg, timings, iou, **extra)
