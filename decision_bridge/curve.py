"""Optional CURVE encryption and authentication of the mask transport (ZeroMQ's CurveZMQ).

Keys live in files in ZeroMQ's certificate format (what czmq's ``zcert`` and pyzmq's
``zmq.auth.create_certificates`` write; ``roadseg bridge keygen NAME`` makes a pair):
``NAME.key`` holds the public key, ``NAME.key_secret`` the public and the secret key, each a
40-character Z85 string::

    curve
        public-key = "rq:rM>}U?@Lns47E1%kR.o@n%FcmmsL/@{H8]yf7"
        secret-key = "JTKVSB%%)wK0E.X)V>+}o?pNmC{O&4W4b!Ni{Lh6"

* :class:`CurveServer`: the publisher's own secret key file and, optionally, a directory of
  authorized clients' public ``.key`` files. With the directory, only those clients get a
  connection (ZAP authentication in a background thread); without it, any client that knows the
  server's PUBLIC key may connect: the traffic is encrypted, but the clients are not
  authenticated.
* :class:`CurveClient`: a subscriber's view: the server's public key file and the client's
  own secret key file (its public key is derived from the secret one).

Both load and check their files when constructed, so a missing or malformed key fails at
configuration with a :class:`CurveError` naming the file, not later on a socket.
"""

from __future__ import annotations

import logging
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator
from zmq.utils import z85

log = logging.getLogger(__name__)

PUBLIC_SUFFIX = ".key"  # ZeroMQ's certificate file names: NAME.key (public), NAME.key_secret (secret)
SECRET_SUFFIX = ".key_secret"
Z85_KEY_LENGTH = 40  # a 32-byte Curve25519 key in Z85
ZAP_DOMAIN = "*"  # authenticate clients of every domain (roadseg sets none)


class CurveError(ValueError):
    """CURVE is not available, or a key file or directory is missing or malformed."""


def require_curve() -> None:
    if not zmq.has("curve"):
        raise CurveError(f"this libzmq ({zmq.zmq_version()}) was built without CURVE security (libsodium)")


def _key(path: Path, value: bytes | None, what: str) -> bytes:
    if value is None:
        raise CurveError(f"{path}: no {what} in this key file")
    if len(value) != Z85_KEY_LENGTH:
        raise CurveError(f"{path}: the {what} is not a {Z85_KEY_LENGTH}-character Z85 key")
    try:
        z85.decode(value)
    except (ValueError, KeyError, IndexError):
        raise CurveError(f"{path}: the {what} is not valid Z85") from None
    return value


def _load(path: Path) -> tuple[bytes | None, bytes | None]:
    if not path.is_file():
        raise CurveError(f"CURVE key file {path}: no such file")
    try:
        return zmq.auth.load_certificate(path)
    except (OSError, ValueError) as exc:
        raise CurveError(f"CURVE key file {path}: {exc}") from None


def load_public_key(path: Path) -> bytes:
    """The Z85 public key in ``path`` (a ``.key`` file; a ``.key_secret`` file holds it too)."""
    public, _ = _load(path)
    return _key(path, public, "public key")


def load_key_pair(path: Path) -> tuple[bytes, bytes]:
    """(public, secret) Z85 keys of a ``.key_secret`` file; the public key is derived from the secret one
    (and must match the file's own, if it has one)."""
    public, secret = _load(path)
    if secret is None:
        raise CurveError(f"{path}: no secret key in this key file (a public {PUBLIC_SUFFIX} file? "
                         f"give the NAME{SECRET_SUFFIX} file)")
    secret = _key(path, secret, "secret key")
    derived = zmq.curve_public(secret)
    if public is not None and public != derived:
        raise CurveError(f"{path}: the public key does not belong to the secret key")
    mode = path.stat().st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        log.warning("CURVE secret key file %s is readable by others (mode %o); chmod 600 it",
                    path, stat.S_IMODE(mode))
    return derived, secret


def authorized_keys(directory: Path) -> dict[bytes, bool]:
    """The public keys in ``directory``'s ``*.key`` files, checked one by one (the form ZAP uses)."""
    if not directory.is_dir():
        raise CurveError(f"CURVE clients directory {directory}: no such directory")
    files = sorted(directory.glob(f"*{PUBLIC_SUFFIX}"))
    if not files:
        raise CurveError(f"CURVE clients directory {directory}: no public key files (*{PUBLIC_SUFFIX}); "
                         "no subscriber could connect")
    return {load_public_key(path): True for path in files}


@dataclass(frozen=True)
class CurveServer:
    """The publisher's CURVE settings: its secret key file, and optionally the authorized clients.

    ``clients_dir`` None: encryption only, any client that knows the server's public key may
    subscribe. Otherwise only the clients whose public ``.key`` file is in that directory (read
    once, when the publisher binds).
    """

    secret_key_file: Path
    clients_dir: Path | None = None
    public_key: bytes = field(init=False, repr=False, compare=False)
    secret_key: bytes = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        require_curve()
        object.__setattr__(self, "secret_key_file", Path(self.secret_key_file))
        if self.clients_dir is not None:
            object.__setattr__(self, "clients_dir", Path(self.clients_dir))
            authorized_keys(self.clients_dir)
        public, secret = load_key_pair(self.secret_key_file)
        object.__setattr__(self, "public_key", public)
        object.__setattr__(self, "secret_key", secret)

    def apply(self, sock: zmq.Socket) -> None:
        """Make ``sock`` a CURVE server (before it binds)."""
        sock.setsockopt(zmq.CURVE_SERVER, 1)
        sock.setsockopt(zmq.CURVE_SECRETKEY, self.secret_key)

    def start_authenticator(self, context: zmq.Context) -> ThreadAuthenticator | None:
        """With ``clients_dir``: start the ZAP handler of ``context`` (its own thread) that admits only
        those clients; stop it with ``stop()``. None without ``clients_dir``. One per context."""
        if self.clients_dir is None:
            return None
        keys = authorized_keys(self.clients_dir)  # checked again: the directory may have changed
        auth = ThreadAuthenticator(context, log=log)
        try:
            auth.start()
        except zmq.ZMQError as exc:
            auth.stop()
            raise CurveError(f"cannot start CURVE client authentication: {exc.strerror} "
                             "(another authenticator in this ZeroMQ context?)") from exc
        auth.configure_curve(domain=ZAP_DOMAIN, location=self.clients_dir)
        if ZAP_DOMAIN not in auth.certs:  # configure_curve only logs a directory it cannot read
            auth.stop()
            raise CurveError(f"CURVE clients directory {self.clients_dir}: cannot be read")
        log.info("CURVE: %d authorized client key(s) from %s", len(keys), self.clients_dir)
        return auth


@dataclass(frozen=True)
class CurveClient:
    """A subscriber's CURVE settings: the server's public key file and the client's own secret key file."""

    server_key_file: Path
    key_file: Path
    server_key: bytes = field(init=False, repr=False, compare=False)
    public_key: bytes = field(init=False, repr=False, compare=False)
    secret_key: bytes = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        require_curve()
        object.__setattr__(self, "server_key_file", Path(self.server_key_file))
        object.__setattr__(self, "key_file", Path(self.key_file))
        object.__setattr__(self, "server_key", load_public_key(self.server_key_file))
        public, secret = load_key_pair(self.key_file)
        object.__setattr__(self, "public_key", public)
        object.__setattr__(self, "secret_key", secret)

    def apply(self, sock: zmq.Socket) -> None:
        """Make ``sock`` a CURVE client of the server (before it connects)."""
        sock.setsockopt(zmq.CURVE_SERVERKEY, self.server_key)
        sock.setsockopt(zmq.CURVE_PUBLICKEY, self.public_key)
        sock.setsockopt(zmq.CURVE_SECRETKEY, self.secret_key)


def generate_key_pair(directory: Path, name: str) -> tuple[Path, Path]:
    """Write a new key pair as ``directory/NAME.key`` (public) and ``NAME.key_secret`` (secret, mode 0600);
    returns their paths. Refuses to overwrite either file."""
    require_curve()
    if not name or name.startswith(".") or os.sep in name or (os.altsep and os.altsep in name):
        raise CurveError(f"key name {name!r}: expected a plain file name such as 'planner'")
    directory = Path(directory)
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CurveError(f"cannot create key directory {directory}: {exc.strerror}") from None
    public_path, secret_path = directory / f"{name}{PUBLIC_SUFFIX}", directory / f"{name}{SECRET_SUFFIX}"
    created: list[Path] = []
    try:
        # Created exclusively first, the secret one already 0600: never overwrites a key, and the
        # secret key is never in a file others can read, not even for a moment.
        for path, mode in ((secret_path, 0o600), (public_path, 0o644)):
            try:
                os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode))
            except FileExistsError:
                raise CurveError(f"{path} already exists; not overwriting a key (remove it or pick another name)") \
                    from None
            except OSError as exc:
                raise CurveError(f"cannot write key file {path}: {exc.strerror}") from None
            created.append(path)
        os.chmod(secret_path, 0o600)
        zmq.auth.create_certificates(directory, name)
    except BaseException:
        for path in created:
            path.unlink(missing_ok=True)
        raise
    return public_path, secret_path
