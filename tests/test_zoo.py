"""Model zoo: download over real loopback HTTP, sha256 checks, offline import, CLI, registry names."""

from __future__ import annotations

import hashlib
import json
import os
import re
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import replace
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import pytest
import torch
from torch import nn

from models.networks.factory import build_model
from models.store import zoo
from models.store.checkpoint import CheckpointError, InputSpec, ModelCard, save_checkpoint
from models.store.registry import list_models, load_model
from models.store.zoo import ZOO, ZooEntry, ZooError
from stream.cli import main as roadseg_main
from tests.conftest import REPO, require_shared

ROADSEG = [sys.executable, "-m", "stream.cli"]
TINY = {"arch": "unet", "encoder": "resnet18", "encoder_depth": 3, "decoder_channels": [16, 8, 8]}
PAYLOAD = b"tiny upstream weights v1\n" * 4096  # ~100 kB: several chunks and progress updates
PAYLOAD_SHA = hashlib.sha256(PAYLOAD).hexdigest()
NAME = "tiny-test"


def tiny_importer(source: Path, destination: Path) -> ModelCard:
    """Stands in for a real importer: checks it got the upstream bytes, writes a roadseg checkpoint."""
    assert Path(source).read_bytes() == PAYLOAD
    torch.manual_seed(0)
    card = ModelCard(model_id=NAME, family="smp", arguments=TINY, input=InputSpec(size=(64, 32)),
                     provenance={"source_sha256": PAYLOAD_SHA})
    save_checkpoint(destination, build_model("smp", TINY).eval(), card)
    return card


def broken_importer(source: Path, destination: Path) -> ModelCard:
    destination.write_bytes(b"half a checkpoint")
    raise KeyError("model")


class _QuietHandler(SimpleHTTPRequestHandler):
    requests: ClassVar[list[str]] = []

    def log_message(self, format: str, *args: object) -> None:
        type(self).requests.append(self.path)


@pytest.fixture
def server(tmp_path) -> Iterator[tuple[str, Path]]:
    """An HTTP server on 127.0.0.1 (random port) serving a temp dir; yields (base URL, dir)."""
    root = tmp_path / "www"
    root.mkdir()
    (root / "tiny.bin").write_bytes(PAYLOAD)
    _QuietHandler.requests = []
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), partial(_QuietHandler, directory=str(root)))
    thread = threading.Thread(target=httpd.serve_forever, name="zoo-test-http", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", root
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=10)


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    path = tmp_path / "cache"
    monkeypatch.setenv("ROADSEG_CACHE", str(path))
    return path


@pytest.fixture
def tiny_entry(server, monkeypatch) -> ZooEntry:
    item = ZooEntry(name=NAME, url=f"{server[0]}/tiny.bin", sha256=PAYLOAD_SHA, filename="tiny.bin",
                    importer=f"{__name__}:tiny_importer", description="test only", license="MIT",
                    input_size=(64, 32))
    monkeypatch.setitem(ZOO, NAME, item)
    return item


def _files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()) if root.exists() else []


def _refused_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]  # closed on exit: nothing listens there


def test_cache_dir_resolution(monkeypatch, tmp_path):
    monkeypatch.setenv("ROADSEG_CACHE", str(tmp_path / "explicit"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert zoo.cache_dir() == (tmp_path / "explicit").resolve()
    monkeypatch.delenv("ROADSEG_CACHE")
    assert zoo.cache_dir() == (tmp_path / "xdg" / "roadseg").resolve()
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert zoo.cache_dir() == (tmp_path / "home" / ".cache" / "roadseg").resolve()


def test_registry_entries_match_shared_readme():
    assert set(ZOO) >= {"dabnet-cityscapes", "espnetv2-cityscapes"}
    for item in ZOO.values():
        assert item.url.startswith("https://") and len(item.sha256) == 64
        assert item.importer.count(":") == 1 and item.license == "MIT"
    assert ZOO["dabnet-cityscapes"].input_size == (2048, 1024)
    assert ZOO["espnetv2-cityscapes"].input_size == (1024, 512)


def test_pull_downloads_verifies_imports_and_loads(cache, tiny_entry, server):
    path = zoo.pull(NAME, progress=True)
    assert path == cache / "models" / f"{NAME}.safetensors"
    assert _files(cache) == ["downloads/tiny.bin", f"models/{NAME}.safetensors"]  # no temp files left
    assert (cache / "downloads" / "tiny.bin").read_bytes() == PAYLOAD
    assert _QuietHandler.requests == ["/tiny.bin"]
    assert zoo.cached_checkpoint(NAME) == path
    model, card = load_model(NAME)
    assert isinstance(model, nn.Module) and card.model_id == NAME and not model.training
    torch.manual_seed(0)
    expected = build_model("smp", TINY).state_dict()
    assert all(torch.equal(value, expected[key]) for key, value in model.state_dict().items())
    # Re-import needs no download: the verified upstream file is kept, the server can be gone.
    again = zoo.pull(NAME, progress=False, url=f"http://127.0.0.1:{_refused_port()}/tiny.bin")
    assert again == path and _QuietHandler.requests == ["/tiny.bin"]


def test_wrong_sha_is_rejected_and_leaves_nothing(cache, tiny_entry, monkeypatch):
    monkeypatch.setitem(ZOO, NAME, replace(tiny_entry, sha256="0" * 64))
    with pytest.raises(ZooError) as info:
        zoo.pull(NAME, progress=False)
    message = str(info.value)
    assert "0" * 64 in message and PAYLOAD_SHA in message and tiny_entry.url in message
    assert _files(cache) == []
    assert zoo.cached_checkpoint(NAME) is None


def test_http_404_names_the_url(cache, tiny_entry, server):
    url = f"{server[0]}/missing.bin"
    with pytest.raises(ZooError, match="404") as info:
        zoo.pull(NAME, progress=False, url=url)
    assert url in str(info.value) and f"roadseg models import {NAME} --from FILE" in str(info.value)
    assert _files(cache) == []


def test_connection_refused_names_the_url(cache, tiny_entry):
    url = f"http://127.0.0.1:{_refused_port()}/tiny.bin"
    with pytest.raises(ZooError) as info:
        zoo.pull(NAME, progress=False, url=url)
    assert url in str(info.value) and "--from FILE" in str(info.value)
    assert _files(cache) == []


def test_import_file_offline(cache, tiny_entry, tmp_path):
    local = tmp_path / "downloaded-elsewhere.bin"
    local.write_bytes(PAYLOAD)
    path = zoo.import_file(NAME, local)
    assert _files(cache) == ["downloads/tiny.bin", f"models/{NAME}.safetensors"]
    assert load_model(NAME)[1].model_id == NAME and path == zoo.cached_checkpoint(NAME)
    assert _QuietHandler.requests == []  # never touched the network


def test_import_file_wrong_file_is_rejected_by_sha(cache, tiny_entry, tmp_path):
    wrong = tmp_path / "other.bin"
    wrong.write_bytes(PAYLOAD + b"tampered")
    with pytest.raises(ZooError, match="sha256 mismatch") as info:
        zoo.import_file(NAME, wrong)
    assert PAYLOAD_SHA in str(info.value) and hashlib.sha256(wrong.read_bytes()).hexdigest() in str(info.value)
    assert _files(cache) == []
    with pytest.raises(ZooError, match="no such file"):
        zoo.import_file(NAME, tmp_path / "absent.bin")


def test_failing_importer_leaves_no_checkpoint(cache, tiny_entry, monkeypatch):
    monkeypatch.setitem(ZOO, NAME, replace(tiny_entry, importer=f"{__name__}:broken_importer"))
    with pytest.raises(ZooError, match=r"importing tiny-test .* failed .*KeyError"):
        zoo.pull(NAME, progress=False)
    assert _files(cache) == ["downloads/tiny.bin"]  # verified download kept for the next try


def test_missing_importer_module_is_a_clear_error(cache, tiny_entry, monkeypatch, tmp_path):
    monkeypatch.setitem(ZOO, NAME, replace(tiny_entry, importer="models.store.importers.no_such_module:run"))
    local = tmp_path / "tiny.bin"
    local.write_bytes(PAYLOAD)
    message = "importer models.store.importers.no_such_module:run is not available"
    with pytest.raises(ZooError, match=re.escape(message)):
        zoo.import_file(NAME, local)


def test_unknown_name_lists_valid_names(cache):
    for call in (lambda: zoo.entry("nope"), lambda: zoo.pull("nope", progress=False)):
        with pytest.raises(ZooError, match=r"unknown zoo model 'nope'.*dabnet-cityscapes.*espnetv2-cityscapes"):
            call()
    with pytest.raises(CheckpointError, match=r"demo.*dabnet-cityscapes"):
        load_model("nope")


def test_not_pulled_model_says_how_to_get_it(cache):
    with pytest.raises(CheckpointError) as info:
        load_model("dabnet-cityscapes")
    assert str(info.value) == (
        "model 'dabnet-cityscapes' is not downloaded yet: run 'roadseg models pull dabnet-cityscapes' "
        "(or 'roadseg models import dabnet-cityscapes --from FILE' offline)"
    )


def test_list_models_reports_cache_state(cache, tiny_entry, tmp_path):
    listed = {m.name: m for m in list_models()}
    assert listed["demo"].kind == "built-in" and listed["demo"].cached
    assert listed["dabnet-cityscapes"].kind == "downloadable" and not listed["dabnet-cityscapes"].cached
    assert not listed[NAME].cached
    local = tmp_path / "tiny.bin"
    local.write_bytes(PAYLOAD)
    zoo.import_file(NAME, local)
    assert {m.name: m for m in list_models()}[NAME].cached


def test_cli_in_process(cache, tiny_entry, server, tmp_path, capsys):
    """pull/import/info through ``stream.cli.main``: results on stdout, bad input exits 2."""
    assert roadseg_main(["models", "pull", NAME, "--no-progress"]) == 0
    assert str(cache / "models" / f"{NAME}.safetensors") in capsys.readouterr().out
    assert roadseg_main(["models", "info", NAME]) == 0
    assert json.loads(capsys.readouterr().out)["model_id"] == NAME
    assert roadseg_main(["models", "info", "demo"]) == 0
    assert json.loads(capsys.readouterr().out)["format"] == "roadseg.checkpoint"
    wrong = tmp_path / "wrong.bin"
    wrong.write_bytes(b"not it")
    for argv, expected in (
        (["models", "pull", "nope"], "valid: dabnet-cityscapes, espnetv2-cityscapes"),
        (["models", "import", NAME, "--from", str(tmp_path / "absent")], "no such file"),
        (["models", "import", NAME, "--from", str(wrong)], f"expected {PAYLOAD_SHA}"),
        (["models", "pull", NAME, "--url", f"{server[0]}/gone.bin"], f"{server[0]}/gone.bin"),
        (["models", "info", "espnetv2-cityscapes"], "roadseg models pull espnetv2-cityscapes"),
        (["models", "info", str(tmp_path / "absent.safetensors")], "no such file"),
    ):
        if argv[2] == NAME and argv[1] == "pull":
            (cache / "downloads" / "tiny.bin").unlink()  # force a download from the bad URL
        assert roadseg_main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith("roadseg: error: ") and expected in err, (argv, err)


def test_cli_models_list_subprocess(tmp_path):
    env = {**os.environ, "ROADSEG_CACHE": str(tmp_path / "cache")}
    result = subprocess.run([*ROADSEG, "models", "list"], capture_output=True, text=True, env=env, cwd=REPO,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    lines = {line.split()[0]: line for line in result.stdout.splitlines() if line.strip()}
    assert {"demo", "dabnet-cityscapes", "espnetv2-cityscapes"} <= set(lines)
    assert "built-in" in lines["demo"] and "downloadable" in lines["dabnet-cityscapes"]
    assert "2048x1024" in lines["dabnet-cityscapes"] and "1024x512" in lines["espnetv2-cityscapes"]
    assert str(tmp_path / "cache") in result.stdout


@pytest.mark.parametrize(
    ("name", "weights", "module"),
    [
        ("dabnet-cityscapes", "weights/dabnet_cityscapes_paddle.params", "models.store.importers.paddle_dabnet"),
        ("espnetv2-cityscapes", "weights/espnetv2_s_2.0_city_1024x512.pth", "models.store.importers.torch_espnetv2"),
    ],
)
def test_import_real_upstream_weights(name, weights, module, tmp_path):
    """The real importers on the real upstream files, as a user runs them: offline import, then
    ``load_model(NAME)`` in a fresh process, as ``roadseg run --model NAME`` does."""
    pytest.importorskip(module)
    source = require_shared(weights)
    env = {**os.environ, "ROADSEG_CACHE": str(tmp_path / "cache")}
    result = subprocess.run([*ROADSEG, "models", "import", name, "--from", str(source)],
                            capture_output=True, text=True, env=env, cwd=REPO, timeout=300)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "cache" / "models" / f"{name}.safetensors").is_file()
    assert (tmp_path / "cache" / "downloads" / ZOO[name].filename).read_bytes() == source.read_bytes()
    probe = (
        "import json; from models.store.registry import load_model; "
        f"model, card = load_model({name!r}); "
        "print(json.dumps({'params': sum(p.numel() for p in model.parameters()), "
        "'size': list(card.input.size)}))"
    )
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, cwd=REPO,
                            timeout=300)
    assert loaded.returncode == 0, loaded.stderr
    facts = json.loads(loaded.stdout)
    assert tuple(facts["size"]) == ZOO[name].input_size
    assert 0.7e6 < facts["params"] < 0.85e6  # 0.76 M (DABNet) / 0.79 M (ESPNetv2) per the zoo descriptions
