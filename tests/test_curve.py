"""CURVE encryption and authentication of the mask transport: keys from files, `roadseg bridge keygen`.

Real ZeroMQ sockets on random loopback ports, linger 0; every receive has a timeout. Each
"receives nothing" check runs next to a subscriber that does receive, so the silence is the
handshake refusing the client and not a publisher that sends nothing.
"""

from __future__ import annotations

import asyncio
import os
import re
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import zmq

from decision_bridge.curve import CurveClient, CurveError, CurveServer, generate_key_pair
from decision_bridge.publisher import MaskPublisher
from decision_bridge.subscriber import MaskSubscriber
from models.backends.common import Precision
from stream.config import PipelineConfig
from stream.outputs import is_local
from tests.pipeline_helpers import LOOPBACK_ANY, receive, running, wait_for
from tests.test_decision_bridge import make_parts

pytestmark = [
    pytest.mark.timeout(60),
    pytest.mark.skipif(not zmq.has("curve"), reason="libzmq without CURVE"),
]

ANY_PORT = "tcp://127.0.0.1:0"
ROADSEG = [sys.executable, "-m", "stream.cli"]
JOIN_TIMEOUT_S = 5.0
SILENCE_S = 1.0  # how long a refused subscriber is watched receiving nothing


@dataclass(frozen=True)
class Keys:
    server: tuple[Path, Path]  # (public, secret)
    planner: tuple[Path, Path]  # authorized: its public key is in clients/
    stranger: tuple[Path, Path]  # a valid key pair that is not authorized
    clients: Path


@pytest.fixture
def keys(tmp_path: Path) -> Keys:
    clients = tmp_path / "clients"
    planner = generate_key_pair(tmp_path / "planner", "planner")
    clients.mkdir()
    (clients / "planner.key").write_bytes(planner[0].read_bytes())
    return Keys(server=generate_key_pair(tmp_path, "server"), planner=planner,
                stranger=generate_key_pair(tmp_path / "stranger", "stranger"), clients=clients)


@pytest.fixture
def publish(keys: Keys, no_leaked_threads) -> Iterator[list[MaskPublisher]]:
    """Publishers made in a test, closed after it (the ZAP thread must be gone then)."""
    made: list[MaskPublisher] = []
    yield made
    for pub in made:
        pub.close()


def curve_publisher(made: list[MaskPublisher], keys: Keys, *, authenticate: bool) -> MaskPublisher:
    curve = CurveServer(keys.server[1], keys.clients if authenticate else None)
    pub = MaskPublisher(ANY_PORT, curve=curve)
    made.append(pub)
    pub.bind()
    return pub


def client(keys: Keys, pair: tuple[Path, Path], server_public: Path | None = None) -> CurveClient:
    return CurveClient(server_public or keys.server[0], pair[1])


def subscribe(pub: MaskPublisher, curve: CurveClient | None) -> MaskSubscriber:
    sub = MaskSubscriber(pub.bound_address, curve=curve)
    sub.connect()
    return sub


def received_while_publishing(pub: MaskPublisher, good: MaskSubscriber, others: list[MaskSubscriber]) -> list[int]:
    """Masks each of ``others`` received while ``good`` (which must receive) received its first ones and
    SILENCE_S passed: sends a mask every 20 ms the whole time."""
    assert asyncio.run(pub.wait_for_subscriber(JOIN_TIMEOUT_S)), "the authorized subscriber never joined"
    counts = [0] * len(others)
    good_count, seq = 0, 0
    deadline = time.monotonic() + SILENCE_S
    while time.monotonic() < deadline or good_count == 0:
        assert time.monotonic() < deadline + JOIN_TIMEOUT_S, "the authorized subscriber received nothing"
        assert pub.send(make_parts(seq=seq))
        seq += 1
        good_count += len(good.poll(0.02))
        for i, sub in enumerate(others):
            counts[i] += len(sub.poll(0))
    assert good_count > 0
    # Only the good subscriber's three subscriptions (mask/, status/, eos/) ever reached the publisher.
    assert pub.subscriber_count() == 1
    return counts


def close_all(*subs: MaskSubscriber) -> None:
    for sub in subs:
        sub.close()


# --------------------------------------------------------------------------- keygen


def test_keygen_writes_a_loadable_pair_secret_0600_and_never_overwrites(tmp_path):
    result = subprocess.run([*ROADSEG, "bridge", "keygen", "server", "--dir", str(tmp_path / "k")],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    public, secret = tmp_path / "k" / "server.key", tmp_path / "k" / "server.key_secret"
    assert str(public) in result.stdout and str(secret) in result.stdout
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    assert b"secret-key" not in public.read_bytes()
    server = CurveServer(secret)  # loads: a valid pair whose public half is the .key file's
    assert CurveClient(public, secret).server_key == server.public_key
    before = (public.read_bytes(), secret.read_bytes())

    again = subprocess.run([*ROADSEG, "bridge", "keygen", "server", "--dir", str(tmp_path / "k")],
                           capture_output=True, text=True, timeout=60)
    assert again.returncode == 2 and "already exists" in again.stderr and "Traceback" not in again.stderr
    assert (public.read_bytes(), secret.read_bytes()) == before


def test_keygen_refuses_when_only_the_public_file_exists_and_leaves_nothing_behind(tmp_path):
    (tmp_path / "x.key").write_text("mine")
    with pytest.raises(CurveError, match=re.escape("x.key already exists")):
        generate_key_pair(tmp_path, "x")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.key"]
    assert (tmp_path / "x.key").read_text() == "mine"
    with pytest.raises(CurveError, match="plain file name"):
        generate_key_pair(tmp_path, "../escape")


# --------------------------------------------------------------------------- transport


def test_authorized_client_receives_a_mask(publish, keys):
    pub = curve_publisher(publish, keys, authenticate=True)
    sub = subscribe(pub, client(keys, keys.planner))
    try:
        assert asyncio.run(pub.wait_for_subscriber(JOIN_TIMEOUT_S))
        assert pub.send(make_parts(seq=7))
        message = sub.recv(JOIN_TIMEOUT_S)
        assert message is not None and message.header.seq == 7
    finally:
        sub.close()


def test_wrong_server_key_receives_nothing_while_the_right_one_is_served(publish, keys):
    pub = curve_publisher(publish, keys, authenticate=True)
    good = subscribe(pub, client(keys, keys.planner))
    # The planner's own key pair (authorized), but the stranger's public key taken for the server's.
    wrong = subscribe(pub, client(keys, keys.planner, server_public=keys.stranger[0]))
    try:
        assert received_while_publishing(pub, good, [wrong]) == [0]
    finally:
        close_all(good, wrong)


def test_client_not_in_the_clients_directory_receives_nothing(publish, keys):
    pub = curve_publisher(publish, keys, authenticate=True)
    good = subscribe(pub, client(keys, keys.planner))
    stranger = subscribe(pub, client(keys, keys.stranger))
    try:
        assert received_while_publishing(pub, good, [stranger]) == [0]
    finally:
        close_all(good, stranger)


def test_plain_subscriber_to_a_curve_publisher_receives_nothing(publish, keys):
    pub = curve_publisher(publish, keys, authenticate=False)
    good = subscribe(pub, client(keys, keys.planner))
    plain = subscribe(pub, None)
    try:
        assert received_while_publishing(pub, good, [plain]) == [0]
    finally:
        close_all(good, plain)


def test_without_a_clients_directory_any_client_with_the_server_key_receives(publish, keys):
    """Encryption only: the stranger's key is not checked, only the server key it must know."""
    pub = curve_publisher(publish, keys, authenticate=False)
    stranger = subscribe(pub, client(keys, keys.stranger))
    wrong = subscribe(pub, client(keys, keys.stranger, server_public=keys.planner[0]))
    try:
        assert received_while_publishing(pub, stranger, [wrong]) == [0]
    finally:
        close_all(stranger, wrong)


def test_close_stops_the_authenticator_and_is_idempotent(keys, no_leaked_threads):
    pub = MaskPublisher(ANY_PORT, curve=CurveServer(keys.server[1], keys.clients))
    pub.bind()
    assert pub._authenticator is not None and pub._authenticator.is_alive()
    authenticator = pub._authenticator
    pub.close()
    pub.close()
    assert not authenticator.is_alive() and pub._authenticator is None


def test_second_authenticating_publisher_in_one_context_is_refused_clearly(keys):
    context = zmq.Context()
    first = MaskPublisher(ANY_PORT, context=context, curve=CurveServer(keys.server[1], keys.clients))
    second = MaskPublisher(ANY_PORT, context=context, curve=CurveServer(keys.server[1], keys.clients))
    try:
        first.bind()
        with pytest.raises(CurveError, match="another authenticator"):
            second.bind()
    finally:
        second.close()
        first.close()
        context.term()


# --------------------------------------------------------------------------- key errors


def test_missing_or_malformed_key_files_are_named(tmp_path, keys):
    missing = tmp_path / "nope.key_secret"
    with pytest.raises(CurveError, match=re.escape(f"{missing}: no such file")):
        CurveServer(missing)
    with pytest.raises(CurveError, match="no such file"):
        CurveClient(missing, keys.planner[1])
    with pytest.raises(CurveError, match=re.escape(f"{keys.server[0]}: no secret key")):
        CurveServer(keys.server[0])  # the public half given for the secret one
    garbage = tmp_path / "garbage.key_secret"
    garbage.write_text("curve\n    public-key = \"short\"\n    secret-key = \"alsoshort\"\n")
    with pytest.raises(CurveError, match=re.escape(f"{garbage}: the secret key is not a 40-character Z85 key")):
        CurveServer(garbage)
    empty = tmp_path / "empty.key"
    empty.write_text("# nothing\n")
    with pytest.raises(CurveError, match=re.escape(f"{empty}")):
        CurveClient(empty, keys.planner[1])
    mixed = tmp_path / "mixed.key_secret"
    mixed.write_text(keys.planner[1].read_text().replace(
        _public_key_line(keys.planner[1]), _public_key_line(keys.stranger[1])))
    with pytest.raises(CurveError, match="does not belong"):
        CurveClient(keys.server[0], mixed)


def _public_key_line(path: Path) -> str:
    return next(line for line in path.read_text().splitlines() if "public-key" in line)


def test_clients_directory_missing_empty_or_with_a_bad_key_is_named(tmp_path, keys):
    with pytest.raises(CurveError, match=re.escape(f"{tmp_path / 'none'}: no such directory")):
        CurveServer(keys.server[1], tmp_path / "none")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CurveError, match="no public key files"):
        CurveServer(keys.server[1], tmp_path / "empty")
    (keys.clients / "broken.key").write_text("curve\n    public-key = \"!!\"\n")
    with pytest.raises(CurveError, match=re.escape("broken.key")):
        CurveServer(keys.server[1], keys.clients)


def test_secret_key_readable_by_others_is_warned_about(keys, caplog):
    os.chmod(keys.server[1], 0o644)
    CurveServer(keys.server[1])
    assert "chmod 600" in caplog.text


def test_only_loopback_ipc_and_inproc_count_as_local():
    assert all(is_local(a) for a in ("tcp://127.0.0.1:5555", "tcp://[::1]:5555", "tcp://localhost:1",
                                     "ipc:///tmp/x", "inproc://x"))
    assert not any(is_local(a) for a in ("tcp://0.0.0.0:5555", "tcp://10.0.0.2:5555", "tcp://eth0:5555"))


# --------------------------------------------------------------------------- command line


def test_run_with_a_missing_curve_key_exits_2_naming_it_before_the_model_loads(tmp_path):
    missing = tmp_path / "server.key_secret"
    start = time.monotonic()
    result = subprocess.run([*ROADSEG, "run", "--source", "synthetic:frames=1", "--viewer", "off",
                             "--zmq", ANY_PORT, "--zmq-curve-key", str(missing)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2, result.stderr
    assert f"roadseg: error: CURVE key file {missing}: no such file" in result.stderr
    assert "Traceback" not in result.stderr and "model " not in result.stderr
    assert time.monotonic() - start < 30


def test_curve_clients_without_a_key_is_refused(keys):
    result = subprocess.run([*ROADSEG, "run", "--source", "synthetic:frames=1", "--viewer", "off",
                             "--zmq-curve-clients", str(keys.clients)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "--zmq-curve-clients needs --zmq-curve-key" in result.stderr


def test_bridge_echo_with_curve_keys_receives(publish, keys):
    pub = curve_publisher(publish, keys, authenticate=True)
    echo = subprocess.Popen([*ROADSEG, "bridge", "echo", pub.bound_address, "--count", "1", "--timeout", "30",
                             "--curve-server-key", str(keys.server[0]), "--curve-key", str(keys.planner[1])],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert asyncio.run(pub.wait_for_subscriber(30)), "echo never joined"
        seq = 0
        while echo.poll() is None and seq < 3000:
            pub.send(make_parts(seq=seq))
            seq += 1
            time.sleep(0.01)
        out, err = echo.communicate(timeout=30)
    finally:
        echo.kill()
    assert echo.returncode == 0, err
    assert "cam0 seq=" in out and "masks=1 rejected=0" in out


# --------------------------------------------------------------------------- pipeline


async def test_pipeline_publishes_to_an_authorized_curve_subscriber_only(keys, no_leaked_threads):
    config = PipelineConfig(sources=("cam=synthetic:seed=1,size=128x64,frames=5",), model="demo",
                            precision=Precision.FP32, zmq_address=LOOPBACK_ANY, zmq_wait_subscriber_s=30.0,
                            viewer=None, stats_interval_s=0,
                            zmq_curve=CurveServer(keys.server[1], keys.clients))
    async with running(config) as (pipeline, task):
        await wait_for(lambda: pipeline.zmq_address is not None or task.done(), what="publisher bind")
        assert pipeline.zmq_address is not None, task.result()
        stranger = MaskSubscriber(pipeline.zmq_address, curve=client(keys, keys.stranger))
        stranger.connect()
        planner = MaskSubscriber(pipeline.zmq_address, curve=client(keys, keys.planner))
        planner.connect()
        try:
            messages = await receive(planner, 5)
            await task
            assert [m.header.seq for m in messages] == list(range(5))
            assert stranger.poll(0) == [] and stranger.received == stranger.reports == 0
        finally:
            close_all(planner, stranger)


def test_config_refuses_curve_without_publishing(keys):
    with pytest.raises(ValueError, match="publishing is off"):
        PipelineConfig(sources=("synthetic:",), zmq_address=None, zmq_curve=CurveServer(keys.server[1]))
