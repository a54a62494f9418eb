"""The drives of ``roadseg fleet eval``: ``--drives`` specs and ``--manifest`` files -> :class:`Drive`.

A drive is written like a ``roadseg run --source`` recording (optionally ``NAME=SPEC``):
``cityscapes:ROOT[:split[:city]]`` (frames with their gtFine labelIds), an image folder or glob,
one image, or a video file. A manifest lists drives, with optional ground truth per drive:

- JSON (``*.json``): ``{"drives": [{"source": SPEC, "name": NAME, "truth": DIR}, "SPEC", ...]}``
  (or the list alone). ``truth`` is a folder of labelIds PNGs for an image folder or glob: for
  the image ``X.png`` (or ``X_leftImg8bit.png``) it holds ``X_gtFine_labelIds.png`` or ``X.png``;
- text (any other name): one ``[NAME=]SPEC`` per line, ``#`` starts a comment.

Relative paths in a manifest are relative to the manifest's folder. Listing happens where the
command runs: a cluster's nodes must see the drives at the same paths (a shared file system).
Videos have no ground truth: they count for throughput and latency (and masks) only.

A drive that cannot be listed (a missing folder, no frames) is not an error of the run: it is a
:class:`Drive` with ``error`` set, reported as failed like a drive whose frames fail to decode.
A spec that is no recording at all (a live camera, a malformed ``cityscapes:``) is bad input.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from models.datasets.cityscapes import (
    CITYSCAPES_IMAGE_SUFFIX,
    CITYSCAPES_TRUTH_SUFFIX,
    IMAGE_EXTENSIONS,
    cityscapes_lister,
    cityscapes_truth_for,
    list_images,
)
from models.datasets.recordings import LIVE_PREFIXES, parse_recording, video_frame_count
from models.errors import DatasetError

IMAGES = "images"
VIDEO = "video"
_NAMED = re.compile(r"^([A-Za-z][\w.-]*)=(.+)$")  # NAME=SPEC, as roadseg run --source takes it


@dataclass(frozen=True)
class Frame:
    """One image frame of a drive: its position in the drive, name, image and labelIds (or None)."""

    index: int
    name: str
    image: str
    truth: str | None = None


@dataclass(frozen=True)
class Drive:
    """One recorded drive to evaluate. ``frames``: an image drive's frames (``limit`` applied);
    ``video``: a video drive's file (``limit``: at most that many of its frames);
    ``expected``: frames it should yield (a video's: what its container declares, may be None);
    ``error``: why it could not be listed (then it has no frames)."""

    name: str
    spec: str
    kind: str  # IMAGES or VIDEO
    frames: tuple[Frame, ...] = ()
    video: str | None = None
    limit: int | None = None
    expected: int | None = None
    error: str | None = None
    with_truth: int = field(default=0)  # frames with ground truth

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "spec": self.spec, "kind": self.kind, "expected_frames": self.expected,
                "frames_with_truth": self.with_truth}


@dataclass(frozen=True)
class DriveEntry:
    """A drive as written: spec, optional name and optional truth folder (from a manifest)."""

    spec: str
    name: str | None = None
    truth: str | None = None


def entries_from_specs(specs: list[str]) -> list[DriveEntry]:
    entries = []
    for spec in specs:
        match = _NAMED.match(spec)
        entries.append(DriveEntry(match.group(2), match.group(1)) if match and not Path(spec).exists()
                       else DriveEntry(spec))
    return entries


def read_manifest(path: Path) -> list[DriveEntry]:
    """The drives a manifest lists (see the module doc); DatasetError names a malformed one."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise DatasetError(f"manifest {path}: {exc.strerror or exc}") from exc
    base = path.parent
    if path.suffix.lower() == ".json":
        return _json_manifest(path, text, base)
    entries = []
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            entry = entries_from_specs([line])[0]
            entries.append(DriveEntry(_relative(entry.spec, base), entry.name))
    if not entries:
        raise DatasetError(f"manifest {path}: lists no drive")
    return entries


def _json_manifest(path: Path, text: str, base: Path) -> list[DriveEntry]:
    try:
        body = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DatasetError(f"manifest {path}: not JSON: {exc}") from exc
    items = body.get("drives") if isinstance(body, dict) else body
    if not isinstance(items, list) or not items:
        raise DatasetError(f"manifest {path}: expected {{\"drives\": [...]}} or a list of drives, not empty")
    entries = []
    for position, item in enumerate(items):
        if isinstance(item, str):
            item = {"source": item}
        if not isinstance(item, dict) or not isinstance(item.get("source"), str) or \
                set(item) - {"source", "name", "truth"}:
            raise DatasetError(f"manifest {path}: drive {position}: expected a spec or "
                               "{\"source\": SPEC, \"name\": NAME, \"truth\": DIR}")
        for key in ("name", "truth"):
            if key in item and not isinstance(item[key], str):
                raise DatasetError(f"manifest {path}: drive {position}: {key} must be a string")
        truth = item.get("truth")
        entries.append(DriveEntry(_relative(item["source"], base), item.get("name"),
                                  _relative(truth, base) if truth else None))
    return entries


def _relative(spec: str, base: Path) -> str:
    """A manifest's relative path (also inside ``cityscapes:`` and ``file:``) made relative to its folder."""
    for prefix in ("cityscapes:", "file:", ""):
        if spec.startswith(prefix):
            rest = spec[len(prefix):]
            if prefix == "" and re.match(r"^[a-z][a-z0-9+.-]*:", rest):
                return spec  # some other scheme: left to parse_recording
            path, sep, tail = rest.partition(":") if prefix == "cityscapes:" else (rest, "", "")
            if path and not Path(path).expanduser().is_absolute():
                path = str(base / path)
            return f"{prefix}{path}{sep}{tail}"
    return spec


def list_drives(entries: list[DriveEntry], limit: int | None = None) -> list[Drive]:
    """Resolve each entry to a :class:`Drive` (first ``limit`` frames of each); names made unique."""
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be at least 1, got {limit}")
    drives: list[Drive] = []
    taken: set[str] = set()
    for entry in entries:
        name = _unique(entry.name or default_name(entry.spec), taken)
        drives.append(_drive(entry, name, limit))
    if not drives:
        raise DatasetError("no drives given")
    return drives


def _unique(name: str, taken: set[str]) -> str:
    candidate, n = name, 2
    while candidate in taken:
        candidate, n = f"{name}-{n}", n + 1
    taken.add(candidate)
    return candidate


def default_name(spec: str) -> str:
    """``cityscapes-val-frankfurt``, a folder's or video's name, a glob's folder."""
    if spec.startswith("cityscapes:"):
        parts = [p for p in spec[len("cityscapes:"):].split(":")[1:] if p] or ["val"]
        text = "-".join(["cityscapes", *parts])
    else:
        path = spec[len("file:"):] if spec.startswith("file:") else spec
        parts = [p for p in Path(path).parts if not any(ch in p for ch in "*?[")]
        text = Path(parts[-1]).stem if parts else "drive"
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-.") or "drive"


def _drive(entry: DriveEntry, name: str, limit: int | None) -> Drive:
    try:
        recording = parse_recording(entry.spec)
    except DatasetError as exc:
        if entry.spec.startswith(LIVE_PREFIXES) or ":" in entry.spec.split("/", 1)[0]:
            raise  # not a recording at all (a live camera, a scheme): bad input
        kind = IMAGES if Path(entry.spec).suffix.lower() in IMAGE_EXTENSIONS or not Path(entry.spec).suffix else VIDEO
        return Drive(name, entry.spec, kind, error=str(exc), expected=0)  # a missing file: a failed drive
    if recording.kind == "synthetic":
        raise DatasetError(f"drive {entry.spec!r}: a synthetic drive is no recording; "
                           "give cityscapes:ROOT, an image folder or glob, or a video file")
    if recording.kind == "video":
        if entry.truth:
            raise DatasetError(f"drive {entry.spec!r}: videos have no ground truth here (give the frames "
                               "as an image folder with a truth folder)")
        count = video_frame_count(Path(recording.path))
        expected = min(count, limit) if count is not None and limit is not None else count
        return Drive(name, entry.spec, VIDEO, video=recording.path, limit=limit, expected=expected)
    if entry.truth and recording.kind == "cityscapes":
        raise DatasetError(f"drive {entry.spec!r}: a cityscapes drive has its truth in gtFine/")
    if entry.truth and not Path(entry.truth).is_dir():
        raise DatasetError(f"drive {entry.spec!r}: truth folder {entry.truth}: no such folder")
    try:
        frames = _image_frames(entry, recording.kind, recording.path, recording.split, recording.city)
    except DatasetError as exc:
        return Drive(name, entry.spec, IMAGES, error=str(exc), expected=0)
    if not frames:
        return Drive(name, entry.spec, IMAGES, error=f"{entry.spec}: no image frames", expected=0)
    frames = frames[:limit] if limit is not None else frames
    return Drive(name, entry.spec, IMAGES, frames=tuple(frames), expected=len(frames),
                 with_truth=sum(f.truth is not None for f in frames))


def _image_frames(entry: DriveEntry, kind: str, path: str, split: str, city: str | None) -> list[Frame]:
    if kind == "cityscapes":
        root = Path(path)
        if not root.is_dir():
            raise DatasetError(f"cityscapes root {root}: no such folder")
        images = cityscapes_lister(root, split, city)()
        truth_for = cityscapes_truth_for(root, split)
        truths = [truth_for(image) for image in images]
    else:
        images = list_images(path)() if kind == IMAGES else [Path(path)]
        truths = [_truth_in(Path(entry.truth), image) for image in images] if entry.truth else [None] * len(images)
    return [Frame(i, _frame_name(image), str(image), str(truth) if truth else None)
            for i, (image, truth) in enumerate(zip(images, truths, strict=True))]


def _frame_name(image: Path) -> str:
    return image.name.removesuffix(CITYSCAPES_IMAGE_SUFFIX) if image.name.endswith(CITYSCAPES_IMAGE_SUFFIX) \
        else image.stem


def _truth_in(folder: Path, image: Path) -> Path | None:
    stem = _frame_name(image)
    for candidate in (folder / f"{stem}{CITYSCAPES_TRUTH_SUFFIX}", folder / f"{stem}.png"):
        if candidate.is_file():
            return candidate
    return None
