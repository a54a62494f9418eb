"""Shared fixtures: where ../shared lives, and leak checks."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def shared_dir() -> Path:
    """``ROADSEG_SHARED`` or ``../shared`` beside the checkout."""
    return Path(os.environ.get("ROADSEG_SHARED", REPO.parent / "shared")).resolve()


def require_shared(relative: str) -> Path:
    """A path under shared/; in CI a missing asset fails loudly instead of skipping."""
    path = shared_dir() / relative
    if not path.exists():
        if os.environ.get("CI") == "true":
            pytest.fail(f"shared test asset missing in CI: {path} (set ROADSEG_SHARED)")
        pytest.skip(f"shared test asset missing: {path}")
    return path


@pytest.fixture
def cityscapes_root() -> Path:
    return require_shared("cityscapes")


@pytest.fixture
def cityscapes_mini() -> Path:
    return require_shared("cityscapes-mini")


@pytest.fixture
def no_leaked_threads():
    """Fail if the test leaves a non-daemon or roadseg worker thread running."""
    before = set(threading.enumerate())
    yield
    leaked = [t for t in threading.enumerate() if t not in before and t.is_alive()]
    assert not leaked, f"threads left running: {[t.name for t in leaked]}"


# The real upstream weights, imported once per test session (each import takes seconds) into a
# session temp folder; tests only read these checkpoints.
DABNET_WEIGHTS = "weights/dabnet_cityscapes_paddle.params"
ESPNETV2_WEIGHTS = "weights/espnetv2_s_2.0_city_1024x512.pth"


@pytest.fixture(scope="session")
def dabnet_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from models.store.importers.paddle_dabnet import import_dabnet

    destination = tmp_path_factory.mktemp("dabnet") / "dabnet-cityscapes.safetensors"
    import_dabnet(require_shared(DABNET_WEIGHTS), destination)
    return destination


@pytest.fixture(scope="session")
def espnetv2_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from models.store.importers.torch_espnetv2 import import_espnetv2

    destination = tmp_path_factory.mktemp("espnetv2") / "espnetv2-cityscapes.safetensors"
    import_espnetv2(require_shared(ESPNETV2_WEIGHTS), destination)
    return destination
