"""Read numpy-array pickles without letting them run code.

A pickle is a program: every global it names is imported and may be called.
Upstream weight files are pickles, so they are read with an unpickler that
resolves only the few globals needed to rebuild plain numeric numpy arrays
(plus the two container types such files use) and refuses everything else
before it is imported, let alone called.
"""

from __future__ import annotations

import pickle
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO, cast

import numpy as np

try:  # numpy >= 2 (numpy 1.26 keeps the same function under numpy.core)
    from numpy._core.multiarray import _reconstruct as _np_reconstruct
except ImportError:  # pragma: no cover - numpy 1.x
    from numpy.core.multiarray import _reconstruct as _np_reconstruct  # type: ignore[no-redef]

# Weight files for real-time nets are a few MB; anything this large is not one,
# and reading it would only risk exhausting memory.
MAX_PICKLE_BYTES = 512 * 1024 * 1024
# Numeric dtype kinds only: bool, signed/unsigned int, float. Object arrays would
# unpickle arbitrary Python objects; structured (void) dtypes are never weights.
ALLOWED_DTYPE_KINDS = frozenset("biuf")
# Names Python records for os functions, so a refusal can say what they really are.
_OS_ALIASES = {"posix": "os", "nt": "os"}


class PickleLoadError(ValueError):
    """A pickle that cannot be read: missing, too large, truncated or corrupt."""


class UnsafePickleError(PickleLoadError):
    """A pickle that names a global outside the allow-list (it could run code)."""


def _reconstruct(subtype: Any, shape: Any, dtype_code: Any) -> np.ndarray:
    # numpy pickles arrays as _reconstruct(ndarray, ...); any other subtype would
    # run that class's constructor, so only the plain ndarray is accepted.
    if subtype is not np.ndarray:
        raise UnsafePickleError(f"array reconstruction with subtype {subtype!r} refused")
    return cast(np.ndarray, _np_reconstruct(np.ndarray, shape, dtype_code))


def _numeric_dtype(*args: Any) -> np.dtype:
    dtype = np.dtype(*args)
    if dtype.kind not in ALLOWED_DTYPE_KINDS or dtype.hasobject:
        raise UnsafePickleError(f"dtype {dtype!r} refused: only bool/int/float arrays may be loaded")
    return dtype


# (module, name) -> what the pickle gets instead of the real global.
ALLOWED_GLOBALS: dict[tuple[str, str], Callable[..., Any]] = {
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,  # written by numpy 1.x
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,  # written by numpy 2.x
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): _numeric_dtype,
    # Containers the Paddle file uses; they only hold already-unpickled values.
    ("builtins", "tuple"): tuple,
    ("collections", "OrderedDict"): OrderedDict,
}


def _display_name(module: str, name: str) -> str:
    public = _OS_ALIASES.get(module)
    return f"{module}.{name} (= {public}.{name})" if public else f"{module}.{name}"


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler whose ``find_class`` resolves only :data:`ALLOWED_GLOBALS`."""

    def __init__(self, file: BinaryIO, source: Path):
        super().__init__(file)
        self.source = source

    def find_class(self, module: str, name: str) -> Any:
        allowed = ALLOWED_GLOBALS.get((module, name))
        if allowed is None:
            raise UnsafePickleError(
                f"{self.source}: pickle references {_display_name(module, name)}, which is not allowed; "
                "only numpy array reconstruction globals may be loaded (the file may try to run code)"
            )
        return allowed

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafePickleError(f"{self.source}: pickle uses persistent ids ({pid!r}); refused")


def load_restricted(path: Path, *, max_bytes: int = MAX_PICKLE_BYTES) -> Any:
    """Unpickle ``path`` allowing only numeric numpy arrays, dtypes, tuples and dicts."""
    if not path.is_file():
        raise PickleLoadError(f"{path}: no such file")
    size = path.stat().st_size
    if size > max_bytes:
        raise PickleLoadError(f"{path}: {size} bytes is over the {max_bytes}-byte limit for a weights pickle")
    try:
        with path.open("rb") as handle:
            return RestrictedUnpickler(handle, path).load()
    except UnsafePickleError as exc:
        if str(path) in str(exc):
            raise
        raise UnsafePickleError(f"{path}: {exc}") from exc
    except (EOFError, pickle.UnpicklingError) as exc:
        raise PickleLoadError(f"{path}: truncated or corrupt pickle ({type(exc).__name__}: {exc})") from exc
    except (ValueError, TypeError, IndexError, KeyError, AttributeError, MemoryError) as exc:
        raise PickleLoadError(f"{path}: malformed pickle ({type(exc).__name__}: {exc})") from exc
