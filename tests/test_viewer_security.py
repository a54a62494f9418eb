"""Viewer security (issue 11): token, Host allow-list, Origin, traversal, stalled viewers, half-sent
requests, /readyz, access log, CLI flags. Real aiohttp servers on loopback, real sockets."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import os
import random
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest

from stream.cli import VIEWER_TOKEN_ENV, build_parser, config_from_args
from web_viewer import ViewerHub, ViewerServer
from web_viewer.hub import MAX_CLIENTS, MAX_CLIENTS_PER_ADDRESS, STALLED_S
from web_viewer.security import ViewerSecurity, parse_origin, split_authority

pytestmark = pytest.mark.timeout(120)

TOKEN = "test-token-0123456789abcdef"
PROTECTED = ["/", "/api/stats", "/api/streams", "/api/telemetry", "/metrics", "/api/segment", "/no/such/page"]
WIDE = 3.0  # seconds: "promptly" on a loaded two-core machine


@contextlib.asynccontextmanager
async def serve(host: str = "127.0.0.1", **kwargs: Any) -> AsyncIterator[tuple[ViewerHub, ViewerServer, str]]:
    hub = ViewerHub(**kwargs.pop("hub_kwargs", {}))
    server = ViewerServer(hub, host, 0, **kwargs)
    port = await server.start()
    try:
        yield hub, server, f"http://127.0.0.1:{port}"
    finally:
        await server.close()
        await hub.close()


def noisy_frame(seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)  # noise: ~100 KB JPEGs, a socket nobody reads fills fast
    return rng.integers(0, 256, (480, 640, 3), dtype=np.uint8), rng.integers(0, 8, (480, 640), dtype=np.uint8)


async def feed(hub: ViewerHub, period_s: float = 0.05) -> None:
    frames = [noisy_frame(i) for i in range(4)]
    seq = 0
    while True:
        hub.offer("cam0", *frames[seq % 4], {"seq": seq})
        seq += 1
        await asyncio.sleep(period_s)


async def first_frame_after_connect(url: str, **kwargs: Any) -> float:
    """Seconds from connecting to ``/ws`` to the first frame (hello first)."""
    start = time.monotonic()
    async with aiohttp.ClientSession() as session, session.ws_connect(f"{url}/ws", **kwargs) as ws:
        hello = await ws.receive(timeout=10)
        assert hello.type == aiohttp.WSMsgType.TEXT, hello
        frame = await ws.receive(timeout=10)
        assert frame.type == aiohttp.WSMsgType.BINARY, frame
    return time.monotonic() - start


async def raw_connect(port: int, source: str = "127.0.0.1", rcvbuf: int | None = None) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf is not None:  # before connect: the window is negotiated in the handshake
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.bind((source, 0))
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    return sock


async def stalled_websocket(port: int, source: str = "127.0.0.1") -> socket.socket:
    """A WebSocket client that upgrades, reads the 101 and then never reads again (tiny receive buffer)."""
    loop = asyncio.get_running_loop()
    sock = await raw_connect(port, source, rcvbuf=4096)
    key = base64.b64encode(os.urandom(16)).decode()
    await loop.sock_sendall(sock, (
        f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
    head = b""
    while b"\r\n\r\n" not in head:  # one byte at a time: nothing after the headers is read
        byte = await asyncio.wait_for(loop.sock_recv(sock, 1), 10)
        assert byte, head
        head += byte
    assert head.startswith(b"HTTP/1.1 101"), head
    return sock


async def closed_after(sock: socket.socket, timeout: float) -> bool:
    """Read (and discard) until the server closes the connection; False if it is still open after timeout."""
    loop = asyncio.get_running_loop()
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        try:
            data = await asyncio.wait_for(loop.sock_recv(sock, 65536), left)
        except (ConnectionResetError, BrokenPipeError):
            return True
        except TimeoutError:
            return False
        if not data:
            return True
    return False


async def wait_until(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


def require_loopback_aliases() -> None:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.2", 0))
        except OSError:
            pytest.skip("no 127.0.0.2 on this machine (the whole 127/8 is loopback on Linux)")


# ---------------------------------------------------------------- token


@pytest.mark.parametrize("path", PROTECTED)
async def test_token_missing_or_wrong_is_401_and_right_token_passes(path: str) -> None:
    async with serve(security=ViewerSecurity(token=TOKEN)) as (_, _, url), aiohttp.ClientSession() as session:
        for headers in ({}, {"Authorization": "Bearer wrong-token-0123456789"}, {"Authorization": f"Basic {TOKEN}"}):
            async with session.get(url + path, headers=headers) as resp:
                assert resp.status == 401, (path, headers)
                assert "token" in await resp.text() and resp.headers["WWW-Authenticate"].startswith("Bearer")
        async with session.get(url + path + "?token=wrong-token-0123456789") as resp:
            assert resp.status == 401
        async with session.get(url + path, headers={"Authorization": f"Bearer {TOKEN}"}) as resp:
            assert resp.status != 401, path  # 200, or 404/405/503 for a route that is not (yet) there


async def test_page_url_token_sets_a_cookie_that_serves_later_requests() -> None:
    async with serve(security=ViewerSecurity(token=TOKEN)) as (_, server, url):
        assert server.page_url.endswith(f"/?token={TOKEN}")
        jar = aiohttp.CookieJar(unsafe=True)  # unsafe: keep cookies from an IP address
        async with aiohttp.ClientSession(cookie_jar=jar) as session:
            async with session.get(f"{url}/?token={TOKEN}") as resp:
                assert resp.status == 200 and "/static/viewer.js" in await resp.text()
                cookie = resp.cookies[f"roadseg_viewer_token_{url.rsplit(':', 1)[1]}"]
                assert cookie["httponly"] and cookie["samesite"] == "Strict"
            async with session.get(f"{url}/api/streams") as resp:
                assert resp.status == 200
            async with session.ws_connect(f"{url}/ws") as ws:
                assert (await ws.receive(timeout=5)).type == aiohttp.WSMsgType.TEXT


async def test_websocket_needs_the_token() -> None:
    async with serve(security=ViewerSecurity(token=TOKEN)) as (_, _, url), aiohttp.ClientSession() as session:
        for suffix in ("", "?token=wrong-token-0123456789"):
            with pytest.raises(aiohttp.WSServerHandshakeError) as info:
                await session.ws_connect(f"{url}/ws{suffix}")
            assert info.value.status == 401
        async with session.ws_connect(f"{url}/ws?token={TOKEN}", origin=url) as ws:
            assert (await ws.receive(timeout=5)).type == aiohttp.WSMsgType.TEXT
        async with session.ws_connect(f"{url}/ws", headers={"Authorization": f"Bearer {TOKEN}"}) as ws:
            assert (await ws.receive(timeout=5)).type == aiohttp.WSMsgType.TEXT


async def test_probes_and_static_files_are_public() -> None:
    async with serve(security=ViewerSecurity(token=TOKEN)) as (_, _, url), aiohttp.ClientSession() as session:
        # protocol.js: a module viewer.js imports; a module import carries no ?token= of its own.
        for path, status in (("/healthz", 200), ("/readyz", 503), ("/static/viewer.js", 200),
                             ("/static/protocol.js", 200), ("/static/favicon.svg", 200)):
            async with session.get(url + path) as resp:
                assert resp.status == status, path


async def test_loopback_bind_needs_no_token_by_default() -> None:
    async with serve() as (_, server, url), aiohttp.ClientSession() as session:
        assert server.policy.token is None and server.page_url == server.url
        for path in ("/", "/api/stats"):
            async with session.get(url + path) as resp:
                assert resp.status == 200


async def test_wildcard_bind_generates_a_token_and_logs_the_url_once(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="web_viewer")
    async with serve("0.0.0.0") as (_, server, url), aiohttp.ClientSession() as session:
        token = server.policy.token
        assert token is not None and len(token) >= 40 and server.policy.generated
        mentions = [r for r in caplog.records if token in r.getMessage()]
        assert len(mentions) == 1 and f"/?token={token}" in mentions[0].getMessage()
        async with session.get(f"{url}/api/stats") as resp:
            assert resp.status == 401
        async with session.get(f"{url}/api/stats", headers={"Authorization": f"Bearer {token}"}) as resp:
            assert resp.status == 200
        port = url.rsplit(":", 1)[1]
        # Any IP literal names a wildcard-bound server (it cannot be DNS-rebound): token still needed.
        async with session.get(f"{url}/api/stats", headers={"Host": f"10.1.2.3:{port}"}) as resp:
            assert resp.status == 401
        async with session.get(f"{url}/api/stats", headers={"Host": f"{socket.gethostname()}:{port}",
                                                              "Authorization": f"Bearer {token}"}) as resp:
            assert resp.status == 200
    async with serve("0.0.0.0") as (_, other, _):
        assert other.policy.token != token  # a new token per run


async def test_insecure_wildcard_bind_serves_without_token_and_warns(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="web_viewer")
    async with serve("0.0.0.0", security=ViewerSecurity(insecure=True)) as (_, server, url):
        assert server.policy.token is None and server.policy.exposed
        async with aiohttp.ClientSession() as session, session.get(f"{url}/api/stats") as resp:
            assert resp.status == 200
    assert any("--viewer-insecure" in r.getMessage() and r.levelno == logging.WARNING for r in caplog.records)


def test_security_settings_are_checked_when_made() -> None:
    for bad, message in (
        (dict(token="short"), "at least 16"),
        (dict(token="has spaces in it 0123456789"), "letters, digits"),
        (dict(token=TOKEN, insecure=True), "contradict"),
        (dict(allow_hosts=("viewer.example:8080",)), "without scheme or port"),
        (dict(allow_hosts=("http://viewer.example",)), "without scheme or port"),
        (dict(allow_hosts=("*",)), "without scheme or port"),
    ):
        with pytest.raises(ValueError, match=message):
            ViewerSecurity(**bad)  # type: ignore[arg-type]
    policy = ViewerSecurity(allow_hosts=("Viewer.Example.", "::1", "[fe80::1]")).resolve("192.168.7.7")
    assert {"viewer.example", "[::1]", "[fe80::1]", "192.168.7.7", "localhost", "127.0.0.1"} <= policy.allowed_hosts
    assert policy.token is not None and policy.generated  # a LAN address is not loopback
    assert not policy.host_allowed("10.0.0.1") and not policy.host_allowed("evil.example")
    assert ViewerSecurity().resolve("::1").token is None and ViewerSecurity().resolve("localhost").token is None


def test_host_and_origin_parsers_never_raise() -> None:
    rng = random.Random(11)
    alphabet = "abc:/[].-_%@?#0123456789 \t\x00é"
    for _ in range(20000):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 30)))
        split_authority(text)
        parse_origin(text)
        parse_origin("http://" + text)
    assert split_authority("LocalHost.:8080") == ("localhost", 8080)
    assert split_authority("[0:0::1]") == ("[::1]", None)
    assert parse_origin("https://viewer.example") == ("https", "viewer.example", None)
    for bad in ("http://127.0.0.1:8080.evil.example", "http://127.0.0.1:0", "http://127.0.0.1:65536", "null"):
        assert parse_origin(bad) is None, bad


# ---------------------------------------------------------------- Host and Origin


async def test_dns_rebinding_host_is_refused() -> None:
    async with serve() as (_, _, url), aiohttp.ClientSession() as session:
        port = url.rsplit(":", 1)[1]
        evil = {"Host": f"evil.example:{port}"}
        for path in ("/", "/api/stats", "/static/viewer.js", "/healthz"):
            async with session.get(url + path, headers=evil) as resp:
                assert resp.status == 421 and "evil.example" in await resp.text(), path
        with pytest.raises(aiohttp.WSServerHandshakeError) as info:  # measured before: 101
            await session.ws_connect(f"{url}/ws", headers=evil, origin=f"http://evil.example:{port}")
        assert info.value.status == 421
        for host in (f"localhost:{port}", f"127.0.0.1:{port}", "localhost"):
            async with session.get(f"{url}/api/stats", headers={"Host": host}) as resp:
                assert resp.status == 200, host
    async with serve(security=ViewerSecurity(allow_hosts=("viewer.example",))) as (_, _, url):
        port = url.rsplit(":", 1)[1]
        async with aiohttp.ClientSession() as session, session.ws_connect(
                f"{url}/ws", headers={"Host": f"viewer.example:{port}"}, origin=f"http://viewer.example:{port}") as ws:
            assert (await ws.receive(timeout=5)).type == aiohttp.WSMsgType.TEXT


async def test_malformed_origins_get_403_never_500() -> None:
    async with serve() as (_, _, url), aiohttp.ClientSession() as session:
        port = int(url.rsplit(":", 1)[1])
        origins = [f"http://127.0.0.1:{port}.evil.example", "garbage", "null", "", "http://127.0.0.1:99999",
                   "http://127.0.0.1:0", "http://127.0.0.1:-1", f"http://[::1:{port}", f"ftp://127.0.0.1:{port}",
                   f"http://user@127.0.0.1:{port}", f"http://127.0.0.1:{port}/path", "http://", "http://:80",
                   f"http://127.0.0.1:{port + 1}", f"http://evil.example:{port}", f"https://127.0.0.1:{port}x"]
        for origin in origins:
            with pytest.raises(aiohttp.WSServerHandshakeError) as info:
                await session.ws_connect(f"{url}/ws", origin=origin)
            assert info.value.status == 403, origin
            async with session.post(f"{url}/api/stats", headers={"Origin": origin}) as resp:
                assert resp.status == 403, origin  # state-changing methods are Origin-checked too
        async with session.get(f"{url}/", headers={"Host": "bad host"}) as resp:
            assert resp.status == 400
        async with session.ws_connect(f"{url}/ws", origin=f"http://localhost:{port}",
                                      headers={"Host": f"localhost:{port}"}) as ws:  # same origin: fine
            assert (await ws.receive(timeout=5)).type == aiohttp.WSMsgType.TEXT


TRAVERSALS = [
    "/static/../app.py", "/static/..%2fapp.py", "/static/%2e%2e/app.py", "/static/%2e%2e%2fapp.py",
    "/static/..%5capp.py", "/static/..\\app.py", "/static/....//app.py", "/static/%252e%252e/app.py",
    "/static/../../../../etc/passwd", "/static/%2e%2e/%2e%2e/%2e%2e/%2e%2e/etc/passwd", "/static//etc/passwd",
    "/static/.%2e/app.py", "/static/%c0%ae%c0%ae/app.py", "/static/viewer.js%00/../../app.py",
]


@pytest.mark.parametrize("token", [None, TOKEN])
async def test_path_traversal_variants_are_refused(token: str | None) -> None:
    assert len(TRAVERSALS) == 14
    security = ViewerSecurity(token=token) if token else None
    async with serve(security=security) as (_, _, url):
        port = int(url.rsplit(":", 1)[1])
        auth = f"Authorization: Bearer {token}\r\n" if token else ""
        for path in TRAVERSALS:  # raw: no client normalises the path for us
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n{auth}Connection: close\r\n\r\n".encode())
            response = await asyncio.wait_for(reader.read(), 10)
            writer.close()
            status = int(response.split(b" ", 2)[1])
            assert status in (400, 403, 404), (path, response[:200])
            assert b"ViewerServer" not in response and b"root:" not in response, path


# ---------------------------------------------------------------- viewers that never read


@pytest.mark.parametrize("addresses", [1, 4])
async def test_stalled_clients_do_not_lock_out_a_real_viewer(addresses: int) -> None:
    """32 WebSocket clients that never read (measured before: real viewers locked out for ~25 s)."""
    if addresses > 1:
        require_loopback_aliases()
    # One address: the real viewer's own (a flood from it must not shut it out); four: others'.
    sources = ["127.0.0.1"] if addresses == 1 else [f"127.0.0.{2 + i}" for i in range(addresses)]
    async with serve() as (hub, _, url):
        port = int(url.rsplit(":", 1)[1])
        feeder = asyncio.create_task(feed(hub))
        stalled = []
        try:
            for i in range(MAX_CLIENTS):
                stalled.append(await stalled_websocket(port, sources[i % addresses]))
            expected = min(MAX_CLIENTS, addresses * MAX_CLIENTS_PER_ADDRESS)
            await wait_until(lambda: hub.stats["clients"] == expected, 10, "the stalled clients to register")
            # All blocked in a send (their sockets are full) for longer than STALLED_S.
            await wait_until(lambda: all(c["in_flight"] for c in hub.stats["per_client"]), 20, "sockets to fill")
            await asyncio.sleep(STALLED_S + 0.5)
            seconds = await first_frame_after_connect(url)
            assert seconds < WIDE, seconds
            stats = hub.stats
            assert stats["clients_rejected"] == 0 and stats["clients_evicted"] >= MAX_CLIENTS + 1 - expected
            assert stats["clients"] <= MAX_CLIENTS
        finally:
            feeder.cancel()
            for sock in stalled:
                sock.close()


async def test_a_client_that_stops_reading_is_dropped_after_the_send_deadline() -> None:
    async with serve(hub_kwargs={"send_deadline_s": 1.0}) as (hub, _, url):
        port = int(url.rsplit(":", 1)[1])
        feeder = asyncio.create_task(feed(hub))
        socks = [await stalled_websocket(port) for _ in range(4)]
        try:
            await wait_until(lambda: hub.stats["clients"] == 4, 10, "the clients to register")
            await wait_until(lambda: all(c["in_flight"] for c in hub.stats["per_client"]), 20, "sockets to fill")
            blocked_at = time.monotonic()
            await wait_until(lambda: hub.stats["clients"] == 0, 1.0 + WIDE, "the send deadline to drop them")
            assert time.monotonic() - blocked_at >= 0.5  # not before the deadline (1 s from the blocked send)
            assert hub.stats["clients_evicted"] == 4
            # Their connections are gone too, not only their slots.
            assert all(await asyncio.gather(*(closed_after(s, 10) for s in socks)))
        finally:
            feeder.cancel()
            for sock in socks:
                sock.close()


async def test_idle_clients_that_never_answer_pings_free_their_slots() -> None:
    """No frames flowing (nothing blocks a send): the heartbeat (5 s + 2.5 s for the pong) frees the slots."""
    require_loopback_aliases()
    async with serve() as (hub, _, url):
        port = int(url.rsplit(":", 1)[1])
        socks = [await stalled_websocket(port, f"127.0.0.{2 + i % 4}") for i in range(MAX_CLIENTS)]
        try:
            await wait_until(lambda: hub.stats["clients"] == MAX_CLIENTS, 10, "the clients to register")
            start = time.monotonic()
            await wait_until(lambda: hub.stats["clients"] == 0, 7.5 + 2 * WIDE, "the heartbeat to drop them")
            assert time.monotonic() - start > 4.0  # the heartbeat, not something else
            hub.offer("cam0", *noisy_frame(0), {"seq": 0})
            assert await first_frame_after_connect(url) < WIDE
        finally:
            for sock in socks:
                sock.close()


# ---------------------------------------------------------------- half-sent requests


async def test_half_sent_requests_are_closed_after_the_header_timeout() -> None:
    """30 connections that never finish their headers: each closed ~1 s after connecting (measured before:
    held for over 150 s), while real requests and a WebSocket stay served."""
    async with serve(header_timeout_s=1.0) as (hub, server, url):
        port = int(url.rsplit(":", 1)[1])
        loop = asyncio.get_running_loop()
        socks = []
        for i in range(30):
            sock = await raw_connect(port)
            await loop.sock_sendall(sock, f"GET /api/stats HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow-{i}: ".encode())
            socks.append(sock)
        opened = time.monotonic()
        feeder = asyncio.create_task(feed(hub))
        try:
            async with aiohttp.ClientSession() as session, session.ws_connect(f"{url}/ws") as ws:
                async with session.get(f"{url}/api/stats") as resp:
                    assert resp.status == 200
                assert all(await asyncio.gather(*(closed_after(s, 1.0 + 2 * WIDE) for s in socks)))
                elapsed = time.monotonic() - opened
                assert 0.8 <= elapsed <= 1.0 + 2 * WIDE, elapsed
                assert server.guard.counts["header_timeouts"] == 30 and server.guard.pending == 0
                # The WebSocket (headers long complete) outlives the timeout.
                await asyncio.sleep(0.5)
                kinds = {(await ws.receive(timeout=5)).type for _ in range(3)}
                assert kinds <= {aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY}, kinds
        finally:
            feeder.cancel()
            for sock in socks:
                sock.close()


async def test_a_flood_of_half_sent_requests_is_capped_per_address() -> None:
    async with serve(header_timeout_s=60.0) as (_, server, url):
        port = int(url.rsplit(":", 1)[1])
        loop = asyncio.get_running_loop()
        socks = []
        for _ in range(100):
            sock = await raw_connect(port)
            await loop.sock_sendall(sock, b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n")
            socks.append(sock)
        try:
            await wait_until(lambda: server.guard.counts["pending_evicted"] == 100 - server.guard.max_pending_per_peer,
                             WIDE, "the oldest pending connections to be closed")
            assert server.guard.pending == server.guard.max_pending_per_peer
            closed = await asyncio.gather(*(closed_after(s, WIDE) for s in socks[:68]))
            assert all(closed)  # the oldest went, not the newest
            async with aiohttp.ClientSession() as session, session.get(f"{url}/healthz") as resp:
                assert resp.status == 200
        finally:
            for sock in socks:
                sock.close()


# ---------------------------------------------------------------- server hygiene


async def test_readyz_needs_the_model_and_a_live_stream() -> None:
    model = {"loaded": False}
    status: dict[str, dict[str, Any]] = {"front": {"state": "connecting"}}
    async with serve(security=ViewerSecurity(token=TOKEN), status=lambda: status,
                     ready=lambda: model["loaded"]) as (_, _, url), aiohttp.ClientSession() as session:
        async def readyz() -> tuple[int, dict[str, Any]]:
            async with session.get(f"{url}/readyz") as resp:
                return resp.status, await resp.json()

        assert await readyz() == (503, {"ready": False, "model_loaded": False, "live_streams": [],
                                        "reason": "the model is not loaded yet"})
        model["loaded"] = True
        code, body = await readyz()
        assert code == 503 and body["reason"] == "no stream is live (front: connecting)"
        status["front"]["state"] = "live"
        assert await readyz() == (200, {"ready": True, "model_loaded": True, "live_streams": ["front"],
                                        "reason": None})


async def test_access_log_is_debug_only_and_never_shows_the_token(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    async with serve(security=ViewerSecurity(token=TOKEN)) as (_, _, url), aiohttp.ClientSession() as session:
        for _ in range(3):
            async with session.get(f"{url}/?token={TOKEN}") as resp:
                assert resp.status == 200
    access = [r for r in caplog.records if r.name == "web_viewer.access"]
    assert len(access) == 3 and all(r.levelno == logging.DEBUG for r in access)
    assert not [r for r in caplog.records if TOKEN in r.getMessage()]
    assert not [r for r in caplog.records if r.name.startswith("aiohttp.access")]


async def test_page_with_token_in_headless_chromium(tmp_path: Path) -> None:
    import cv2

    from tests.test_web_viewer import chromium_page, offer_forever, wait_for_new_frames, wait_for_page

    async with serve(security=ViewerSecurity(token=TOKEN)) as (hub, server, _):
        feeder = asyncio.create_task(offer_forever(hub))
        sent: list[tuple[str, str | None]] = []
        try:
            async with chromium_page(tmp_path / "profile") as (page, errors):
                page.on("request", lambda r: sent.append((r.url, r.headers.get("authorization"))))
                page.on("websocket", lambda ws: sent.append((ws.url, None)))
                await page.goto(server.page_url)
                await wait_for_new_frames(page)
                await asyncio.sleep(1.5)  # a status poll (every second)
                address = await page.evaluate("() => location.href")
                stored = await page.evaluate("() => sessionStorage.getItem('roadseg-token')")
                live_errors = list(errors)
                # The upload page of the same tab (its HTML served by the cookie) takes the stored token.
                picture = tmp_path / "tiny.png"
                picture.write_bytes(cv2.imencode(".png", np.zeros((8, 8, 3), np.uint8))[1].tobytes())
                await page.click("a.navlink")
                await page.wait_for_selector("#upload")
                await page.set_input_files("#image", str(picture))
                await page.click("#submit")
                await wait_for_page(page, "() => document.body.dataset.state === 'error'")
                message = await page.inner_text("#message")
        finally:
            feeder.cancel()
    assert "token" not in address and stored == TOKEN  # out of the address bar, kept for the tab
    # The page passes the token on itself (not only through the cookie): WebSocket query, Bearer header.
    assert any(url.endswith(f"/ws?token={TOKEN}") for url, _ in sent), sent
    for api in ("/api/streams", "/api/telemetry"):
        polls = [auth for url, auth in sent if url.endswith(api)]
        assert polls and all(auth == f"Bearer {TOKEN}" for auth in polls), sent
    # The modules viewer.js imports load without a token (static files are public).
    assert any(url.endswith("/static/protocol.js") and auth is None for url, auth in sent), sent
    assert not live_errors, live_errors
    # Past the token check: this server has no model (503), it did not refuse the page (401).
    assert "no model" in message, message
    assert [auth for url, auth in sent if url.endswith("/api/segment?format=json&images=1")] == [f"Bearer {TOKEN}"]


# ---------------------------------------------------------------- CLI


def test_cli_flags_reach_the_pipeline_config(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(VIEWER_TOKEN_ENV, raising=False)
    argv = ["run", "--source", "synthetic:frames=1", "--viewer", "0.0.0.0:0", "--viewer-token", TOKEN,
            "--viewer-allow-host", "Viewer.Example", "--viewer-allow-host", "10.0.0.9"]
    config = config_from_args(build_parser(argv).parse_args(argv))
    assert config.viewer_security == ViewerSecurity(token=TOKEN, allow_hosts=("viewer.example", "10.0.0.9"))
    argv = ["run", "--source", "synthetic:frames=1"]
    assert config_from_args(build_parser(argv).parse_args(argv)).viewer_security is None  # defaults
    monkeypatch.setenv(VIEWER_TOKEN_ENV, TOKEN)
    assert config_from_args(build_parser(argv).parse_args(argv)).viewer_security == ViewerSecurity(token=TOKEN)


@pytest.mark.parametrize(("flags", "message"), [
    (["--viewer-token", TOKEN, "--viewer-insecure"], "contradict"),
    (["--viewer-token", "short"], "at least 16"),
    (["--viewer", "off", "--viewer-token", TOKEN], "need the viewer"),
    (["--viewer", "off", "--viewer-insecure"], "need the viewer"),
    (["--viewer-allow-host", "evil.example:80"], "without scheme or port"),
])  # fmt: skip
def test_cli_bad_viewer_security_fails_before_the_model_loads(flags: list[str], message: str) -> None:
    env = {k: v for k, v in os.environ.items() if k != VIEWER_TOKEN_ENV}
    start = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "stream.cli", "run", "--source", "synthetic:frames=1",
                             "--zmq", "off", *flags], capture_output=True, text=True, timeout=120, env=env)
    assert result.returncode == 2 and message in result.stderr, result.stderr
    assert "model" not in result.stderr.lower() or "error" in result.stderr
    assert time.monotonic() - start < 60
