"""Who may use the viewer: a token, a Host allow-list and an Origin check (one aiohttp middleware).

Policy (README, "Viewer security"):

* **Token.** A loopback bind needs none unless ``--viewer-token`` gives one. Any other bind
  needs one: the given token, or one generated at start (logged once, inside the page URL),
  unless ``--viewer-insecure`` says otherwise. It is accepted as ``Authorization: Bearer T``,
  as ``?token=T`` (the page URL; a valid one also sets an HttpOnly, SameSite=Strict cookie)
  or as that cookie, compared in constant time. Everything needs it except the routes named
  in ``PUBLIC_ROUTES``: the probes and the page's own static files (no data in them).
  Missing or wrong: 401.
* **Host allow-list** (DNS rebinding: a page of ``evil.example`` whose name now resolves to
  us would otherwise be same-origin with the viewer): the bind host, ``localhost``,
  ``127.0.0.1``, ``[::1]`` and ``--viewer-allow-host`` names; a wildcard bind also accepts its
  host name and any IP literal (a rebinding needs a DNS name; an IP literal cannot be
  rebound). Another Host: 421; a malformed one: 400.
* **Origin.** WebSocket upgrades and state-changing methods (POST, ...) that carry an Origin
  must come from this very server (allowed host, same port); anything else, malformed
  Origins included, is 403, never 500.

Everything is resolved once when the server is made (:meth:`ViewerSecurity.resolve`); a
request costs a regex, a set lookup and at most one ``hmac.compare_digest``.
"""

from __future__ import annotations

import contextlib
import hmac
import ipaddress
import logging
import re
import secrets
import socket
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from aiohttp import hdrs, web

if TYPE_CHECKING:
    from aiohttp.typedefs import Middleware

log = logging.getLogger(__name__)

MIN_TOKEN_CHARS = 16
GENERATED_TOKEN_BYTES = 32  # secrets.token_urlsafe: 43 characters, 256 bits
# RFC 6750 token68: safe in a header, a cookie and (URL-encoded) a query string.
_TOKEN_RE = re.compile(r"[A-Za-z0-9._~+/-]+=*")
COOKIE_PREFIX = "roadseg_viewer_token_"  # + the server's port: two viewers on one host keep their own
QUERY_PARAM = "token"
# Route names (see app.py) served without a token: probes and the page's static files.
PUBLIC_ROUTES = frozenset({"healthz", "readyz", "static"})
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "[::1]")
WILDCARD_HOSTS = ("0.0.0.0", "::", "")
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
BEARER_CHALLENGE = 'Bearer realm="roadseg viewer"'
# host (a name, an IPv4 address, or an IPv6 address in brackets), then an optional port.
_AUTHORITY_RE = re.compile(r"(?P<host>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+)(?::(?P<port>[0-9]{1,5}))?")
_ORIGIN_RE = re.compile(r"(?P<scheme>https?)://(?P<authority>[^/?#@\s]+)")
_NAME_RE = re.compile(r"[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*\.?")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True, slots=True)
class ViewerSecurity:
    """The operator's choices (``--viewer-token``, ``--viewer-insecure``, ``--viewer-allow-host``),
    checked when made: a bad one is a ValueError at start-up, before any model loads."""

    token: str | None = None
    insecure: bool = False
    allow_hosts: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.token is not None:
            check_token(self.token)
            if self.insecure:
                raise ValueError("--viewer-token and --viewer-insecure contradict each other: pick one")
        object.__setattr__(self, "allow_hosts", tuple(canonical_host(name) for name in self.allow_hosts))

    def resolve(self, bind_host: str) -> AccessPolicy:
        """The policy for a server bound to ``bind_host``; generates the token if one is needed."""
        wildcard = bind_host in WILDCARD_HOSTS
        hosts = set(LOOPBACK_NAMES) | set(self.allow_hosts)
        if wildcard:
            hosts |= _own_names()
        else:
            with contextlib.suppress(ValueError):  # not a host name (binding will say so)
                hosts.add(canonical_host(bind_host))
        loopback = is_loopback_host(bind_host)
        token, generated = self.token, False
        if token is None and not loopback and not self.insecure:
            token, generated = secrets.token_urlsafe(GENERATED_TOKEN_BYTES), True
        return AccessPolicy(token=token, generated=generated, exposed=not loopback and token is None,
                            allowed_hosts=frozenset(hosts), any_ip_literal=wildcard)


@dataclass(frozen=True, slots=True)
class AccessPolicy:
    """What one server enforces (built once per server by :meth:`ViewerSecurity.resolve`)."""

    token: str | None  # None: no token needed
    generated: bool = False  # the token was made at start (log the page URL with it, once)
    exposed: bool = False  # beyond loopback without a token (--viewer-insecure)
    allowed_hosts: frozenset[str] = frozenset(LOOPBACK_NAMES)
    any_ip_literal: bool = False
    _token_bytes: bytes = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_token_bytes", (self.token or "").encode())

    def host_allowed(self, host: str) -> bool:
        """``host``: canonical (see :func:`split_authority`)."""
        return host in self.allowed_hosts or (self.any_ip_literal and _is_ip_literal(host))

    def token_matches(self, candidate: str) -> bool:
        return self.token is not None and hmac.compare_digest(candidate.encode(), self._token_bytes)

    def origin_allowed(self, origin: str, host: tuple[str, int | None] | None) -> bool:
        """Whether a browser ``Origin`` is this server: an allowed host, and the host and port the
        request was sent to (``host``, from the Host header; None when there was none)."""
        parsed = parse_origin(origin)
        if parsed is None or not self.host_allowed(parsed[1]):
            return False
        return host is None or same_origin(parsed, host)

    def credentials(self, request: web.Request) -> Iterator[tuple[str, str]]:
        """``(how, token)`` for every token the request presents."""
        scheme, _, value = request.headers.get(hdrs.AUTHORIZATION, "").partition(" ")
        if scheme.lower() == "bearer":
            yield "header", value.strip()
        for value in request.query.getall(QUERY_PARAM, []):
            yield "query", value
        cookie = request.cookies.get(cookie_name(request))
        if cookie is not None:
            yield "cookie", cookie

    def authenticate(self, request: web.Request) -> str | None:
        """How the request proved it knows the token (``header``, ``query``, ``cookie``), or None."""
        return next((how for how, value in self.credentials(request) if self.token_matches(value)), None)


def check_token(token: str) -> None:
    if len(token) < MIN_TOKEN_CHARS:
        raise ValueError(f"--viewer-token must have at least {MIN_TOKEN_CHARS} characters "
                         f"(got {len(token)}); e.g. python -c 'import secrets; print(secrets.token_urlsafe())'")
    if not _TOKEN_RE.fullmatch(token):
        raise ValueError("--viewer-token may only use letters, digits and - . _ ~ + / (then '=' padding)")


def canonical_host(name: str) -> str:
    """An allow-list entry in the form :func:`split_authority` gives hosts: lower case, no final
    dot, IPv6 in brackets. ValueError for anything else (a port, a scheme, a wildcard)."""
    text = name.strip()
    bare = text[1:-1] if text.startswith("[") and text.endswith("]") else text
    try:
        return f"[{ipaddress.IPv6Address(bare).compressed}]"
    except ValueError:
        pass
    if text != bare or not _NAME_RE.fullmatch(text):
        raise ValueError(f"--viewer-allow-host {name!r}: expected a host name or an IP address, without "
                         "scheme or port (e.g. viewer.example.com or 192.168.1.20)")
    return text.lower().rstrip(".")


def split_authority(text: str) -> tuple[str, int | None] | None:
    """``"Host:port"`` -> ``(canonical host, port or None)``; None if malformed (never raises)."""
    match = _AUTHORITY_RE.fullmatch(text.strip())
    if match is None:
        return None
    host, port_text = match["host"], match["port"]
    if host.startswith("["):
        try:
            host = f"[{ipaddress.IPv6Address(host[1:-1]).compressed}]"
        except ValueError:
            return None
    else:
        host = host.lower().rstrip(".")
    port = None if port_text is None else int(port_text)
    if port is not None and not 1 <= port <= 65535:
        return None
    return host, port


def parse_origin(origin: str) -> tuple[str, str, int | None] | None:
    """``"http://host:port"`` -> ``(scheme, canonical host, port or None)``; None if malformed,
    ``null`` or anything but http(s) (never raises)."""
    match = _ORIGIN_RE.fullmatch(origin.strip())
    if match is None:
        return None
    authority = split_authority(match["authority"])
    if authority is None:
        return None
    return match["scheme"], authority[0], authority[1]


def same_origin(origin: tuple[str, str, int | None], host: tuple[str, int | None]) -> bool:
    """Whether a parsed Origin names the host and port of a parsed Host header (a port left out
    is the scheme's default: ``https://name`` behind a TLS proxy matches ``Host: name``)."""
    scheme, origin_host, origin_port = origin
    default = 443 if scheme == "https" else 80
    return origin_host == host[0] and (origin_port or default) == (host[1] or default)


def origin_matches_host(request: web.Request) -> bool:
    """The request has no Origin (a tool, not a browser), or its Origin is its own Host. Never
    raises: a malformed Origin or Host is a mismatch (403), not an error (500)."""
    origin = request.headers.get(hdrs.ORIGIN)
    if origin is None:
        return True
    parsed = parse_origin(origin)
    host = split_authority(request.headers.get(hdrs.HOST, ""))
    return parsed is not None and host is not None and same_origin(parsed, host)


def is_loopback_host(host: str) -> bool:
    if host.lower().rstrip(".") == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _is_ip_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host[1:-1] if host.startswith("[") else host)
    except ValueError:
        return False
    return True


def _own_names() -> set[str]:
    """This machine's host name (short and as set), for a wildcard bind; no DNS lookup."""
    names = set()
    name = socket.gethostname().lower().rstrip(".")
    if name and _NAME_RE.fullmatch(name):
        names |= {name, name.split(".")[0]}
    return names


def cookie_name(request: web.Request) -> str:
    sockname = request.transport.get_extra_info("sockname") if request.transport is not None else None
    port = sockname[1] if isinstance(sockname, tuple) and len(sockname) > 1 else 0
    return f"{COOKIE_PREFIX}{port}"


def _refuse(status: int, text: str, **headers: str) -> web.Response:
    return web.Response(status=status, text=text + "\n", headers=headers)


def _is_public(request: web.Request) -> bool:
    resource = request.match_info.route.resource
    return resource is not None and resource.name in PUBLIC_ROUTES


def security_middleware(policy: AccessPolicy) -> Middleware:
    """The aiohttp middleware enforcing ``policy`` on every route (see the module docstring)."""

    @web.middleware
    async def check_access(request: web.Request, handler: Handler) -> web.StreamResponse:
        host_header = request.headers.get(hdrs.HOST)
        host = None
        if host_header is not None:  # absent only from non-browser clients (HTTP/1.0)
            host = split_authority(host_header)
            if host is None:
                return _refuse(400, "malformed Host header")
            if not policy.host_allowed(host[0]):
                return _refuse(421, f"this viewer does not answer to the host name {host[0]!r} (DNS rebinding "
                                    f"protection); start it with --viewer-allow-host {host[0]} to allow it")
        upgrade = request.headers.get(hdrs.UPGRADE, "").lower() == "websocket"
        origin = request.headers.get(hdrs.ORIGIN)
        if (upgrade or request.method not in SAFE_METHODS) and origin is not None and (
                not policy.origin_allowed(origin, host)):
            return _refuse(403, "cross-origin requests to the viewer are not allowed")
        if policy.token is None or _is_public(request):
            return await handler(request)
        how = policy.authenticate(request)
        if how is None:
            return _refuse(401, "viewer token required: open the URL printed at start (it ends in ?token=...), "
                                "or send Authorization: Bearer TOKEN", **{hdrs.WWW_AUTHENTICATE: BEARER_CHALLENGE})
        response = await handler(request)
        if how == "query" and not response.prepared:  # the page URL: later requests may use the cookie
            response.set_cookie(cookie_name(request), policy.token, httponly=True, samesite="Strict", path="/")
        return response

    return check_access
