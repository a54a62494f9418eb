"""Downloadable pretrained models: ``roadseg models pull NAME`` and ``--model NAME``.

Each :class:`ZooEntry` names one upstream weight file (URL + sha256) and the
importer that converts it into a roadseg checkpoint (:mod:`models.store.checkpoint`).
The cache (see :func:`cache_dir`) holds::

    <cache>/downloads/<entry.filename>     the upstream file, sha256-verified
    <cache>/models/<name>.safetensors      the imported roadseg checkpoint

The sha256 is checked before an importer ever sees a byte, so importers only
run on the exact files listed here. Every write goes to a temporary file in the
same directory and is renamed into place, so an interrupted pull leaves no
half-written file under a final name.
"""

from __future__ import annotations

import hashlib
import http.client
import importlib
import os
import shutil
import tempfile
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING

if TYPE_CHECKING:  # torch stays unimported until a model is imported (keeps `roadseg --help` fast)
    from models.store.checkpoint import ModelCard

CACHE_ENV = "ROADSEG_CACHE"
CHUNK_BYTES = 1 << 16
DOWNLOAD_TIMEOUT_S = 60.0


class ZooError(ValueError):
    """A zoo name, download or import that cannot be used; the message says what to do."""


@dataclass(frozen=True)
class ZooEntry:
    name: str
    url: str
    sha256: str
    filename: str  # name of the upstream file under <cache>/downloads/
    importer: str  # "module:function", function(source: Path, destination: Path) -> ModelCard
    description: str
    license: str
    input_size: tuple[int, int]  # native (width, height)


ZOO: dict[str, ZooEntry] = {
    entry.name: entry
    for entry in (
        ZooEntry(
            name="dabnet-cityscapes",
            url="https://raw.githubusercontent.com/WenmuZhou/DABNet_Paddle/"
            "d173a4906795d8b3174b7684688b1174b2c7080e/best.params",
            sha256="6e1bd4a748cd8bd499260f362dfa7dcb39e895770f2bfeb168d670e1bd70586c",
            filename="dabnet_cityscapes_paddle.params",
            importer="models.store.importers.paddle_dabnet:import_dabnet",
            description="DABNet, 0.76 M params, Cityscapes (WenmuZhou/DABNet_Paddle)",
            license="MIT",
            input_size=(2048, 1024),
        ),
        ZooEntry(
            name="espnetv2-cityscapes",
            url="https://raw.githubusercontent.com/sacmehta/EdgeNets/"
            "5976d678ee754b846d09485f2fbd059e6f30883b/model/segmentation/model_zoo/espnetv2/"
            "espnetv2_s_2.0_city_1024x512.pth",
            sha256="a72d59699801c7ce8e8b89a53af9097eaaa60dc12180ecde86fd700ba1222fe8",
            filename="espnetv2_s_2.0_city_1024x512.pth",
            importer="models.store.importers.torch_espnetv2:import_espnetv2",
            description="ESPNetv2 s=2.0, 0.79 M params, Cityscapes (sacmehta/EdgeNets)",
            license="MIT",
            input_size=(1024, 512),
        ),
    )
}


def cache_dir() -> Path:
    """``$ROADSEG_CACHE``, else ``$XDG_CACHE_HOME/roadseg``, else ``~/.cache/roadseg``.

    Reads the environment each call: call it once when a command starts and
    pass the result on (the ``cache=`` arguments below)."""
    explicit = os.environ.get(CACHE_ENV)
    if explicit:
        return Path(explicit).expanduser().resolve()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg and Path(xdg).expanduser().is_absolute() else Path.home() / ".cache"
    return (base / "roadseg").resolve()


def entry(name: str) -> ZooEntry:
    try:
        return ZOO[name]
    except KeyError:
        raise ZooError(f"unknown zoo model {name!r}; valid: {', '.join(sorted(ZOO))}") from None


def checkpoint_path(name: str, *, cache: Path | None = None) -> Path:
    """Where the imported checkpoint of ``name`` lives (whether or not it exists)."""
    return (cache or cache_dir()) / "models" / f"{entry(name).name}.safetensors"


def cached_checkpoint(name: str, *, cache: Path | None = None) -> Path | None:
    path = checkpoint_path(name, cache=cache)
    return path if path.is_file() else None


def download_path(name: str, *, cache: Path | None = None) -> Path:
    """Where the verified upstream file of ``name`` is kept."""
    return (cache or cache_dir()) / "downloads" / entry(name).filename


def pull(name: str, *, progress: bool = True, url: str | None = None, cache: Path | None = None) -> Path:
    """Download (unless a verified copy is cached), verify sha256, import; returns the checkpoint path."""
    item = entry(name)
    cache = cache or cache_dir()
    source = download_path(name, cache=cache)
    if not (source.is_file() and _sha256_file(source) == item.sha256):
        _download(item, url or item.url, source, progress=progress)
    return _import(item, source, cache)


def import_file(name: str, source: Path, *, cache: Path | None = None) -> Path:
    """Offline pull: verify a local copy of the upstream file, keep it, import it."""
    item = entry(name)
    cache = cache or cache_dir()
    source = Path(source).expanduser()
    if not source.is_file():
        raise ZooError(f"{source}: no such file (expected the upstream weights of {name}: {item.url})")
    kept = download_path(name, cache=cache)
    if source.resolve() != kept.resolve():
        with source.open("rb") as handle:
            _store_verified(item, _chunks(handle), kept, origin=str(source))
    elif (actual := _sha256_file(kept)) != item.sha256:
        raise ZooError(_sha_message(item, actual, str(kept)))
    return _import(item, kept, cache)


def _download(item: ZooEntry, url: str, destination: Path, *, progress: bool) -> None:
    from tqdm import tqdm

    advice = (
        f"if this machine is offline, fetch {item.url} elsewhere and run "
        f"'roadseg models import {item.name} --from FILE'"
    )
    try:
        response = urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S)
    except urllib.error.HTTPError as exc:
        raise ZooError(f"downloading {item.name} from {url} failed: HTTP {exc.code} {exc.reason}; {advice}") from exc
    except (urllib.error.URLError, OSError, http.client.HTTPException, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        raise ZooError(f"downloading {item.name} from {url} failed: {reason}; {advice}") from exc
    with response:
        length = response.headers.get("Content-Length")
        total = int(length) if length and length.isdigit() else None
        with tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=item.name,
                  disable=not progress, leave=False) as bar:

            def chunks() -> Iterator[bytes]:
                while True:
                    try:
                        chunk = response.read(CHUNK_BYTES)
                    except (OSError, http.client.HTTPException) as exc:
                        raise ZooError(f"downloading {item.name} from {url} broke off: {exc}; {advice}") from exc
                    if not chunk:
                        return
                    bar.update(len(chunk))
                    yield chunk

            _store_verified(item, chunks(), destination, origin=url)


def _chunks(handle: IO[bytes]) -> Iterator[bytes]:
    while chunk := handle.read(CHUNK_BYTES):
        yield chunk


def _store_verified(item: ZooEntry, chunks: Iterable[bytes], destination: Path, *, origin: str) -> None:
    """Write ``chunks`` to a temp file beside ``destination``; rename it into place only if
    its sha256 is the entry's (hashing what is written, so what is kept is what was checked)."""
    destination.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    fd, temp_name = tempfile.mkstemp(dir=destination.parent, prefix=f".{destination.name}.", suffix=".part")
    temp = Path(temp_name)
    try:
        with os.fdopen(fd, "wb") as out:
            for chunk in chunks:
                digest.update(chunk)
                out.write(chunk)
        actual = digest.hexdigest()
        if actual != item.sha256:
            raise ZooError(_sha_message(item, actual, origin))
        os.replace(temp, destination)
    finally:
        temp.unlink(missing_ok=True)


def _sha_message(item: ZooEntry, actual: str, origin: str) -> str:
    return (
        f"{origin}: sha256 mismatch for {item.name}: expected {item.sha256}, got {actual} "
        f"(wrong or corrupted file; upstream is {item.url}); nothing was imported"
    )


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in _chunks(handle):
            digest.update(chunk)
    return digest.hexdigest()


def _resolve_importer(item: ZooEntry) -> Callable[[Path, Path], ModelCard]:
    module_name, _, function = item.importer.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        raise ZooError(
            f"model {item.name}: importer {item.importer} is not available in this roadseg ({exc})"
        ) from exc
    importer = getattr(module, function, None)
    if not callable(importer):
        raise ZooError(f"model {item.name}: importer {item.importer}: no function {function!r} in {module_name}")
    return importer  # type: ignore[no-any-return]


def _import(item: ZooEntry, source: Path, cache: Path) -> Path:
    """Run the importer into a private temp dir, check the result loads, rename into place."""
    from models.store.checkpoint import checkpoint_lock, load_checkpoint

    importer = _resolve_importer(item)
    final = checkpoint_path(item.name, cache=cache)
    final.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{item.name}.import-"))
    try:
        staged = work / final.name
        try:
            importer(source, staged)
        except ValueError:
            raise  # CheckpointError, ZooError...: already a message for the user
        except Exception as exc:
            raise ZooError(
                f"importing {item.name} from {source} failed ({item.importer}): {type(exc).__name__}: {exc}"
            ) from exc
        load_checkpoint(staged)  # the cached file must load exactly as `--model NAME` will load it
        with checkpoint_lock(final):  # not in the middle of `roadseg eval` recording metrics in the old card
            os.replace(staged, final)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return final
