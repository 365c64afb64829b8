"""CURVE keys and authentication for refscope's ZMQ endpoints, on top of pyzmq's ``zmq.auth``.

Model (ZeroMQ's CurveZMQ, RFC 26): the daemon has one key pair, ``server.key`` (public, given to every operator)
and ``server.key_secret`` (secret, mode 0600, never leaves the daemon's host), in ``security.curve_dir``. Each
client (an operator's TUI, a script, the microscope PC pushing frames) has its own pair; the daemon accepts a
client only when the client's public key file lies in ``security.authorized_clients_dir``. Traffic of accepted
clients is encrypted; a client without keys, with the wrong server key, or with a key that is not authorized
never completes the handshake and gets nothing -- no reply, no frame, no event.

Key files use the ZeroMQ certificate format written by ``zmq.auth.create_certificates`` (Z85 keys, 40
characters): ``NAME.key`` holds the public key, ``NAME.key_secret`` the public and the secret key.

Permissions, whatever the umask: ``refscope keys`` creates folders with mode 0700, secret keys and authorized
client keys with mode 0600 (a generated public key, made to be handed out, 0644), and never writes into an
authorized-clients folder that group or others may write to. The daemon refuses to start
(:class:`~refscope.daemon.config.fields.ConfigError` naming the path and its mode) when its secret key is
readable or writable by group or others, or when its authorized-clients folder is writable by them (anyone
could authorize themselves).

Pieces:

* :func:`generate_keypair` / :func:`authorize_key` -- what ``refscope keys generate`` / ``authorize`` do;
* :class:`CurveServerKeys` / :class:`CurveClientKeys` -- loaded keys that set a socket's CURVE options;
* :class:`AuthorizedKeys` -- the authorized-clients folder, re-read whenever its content changes, so a key
  added or removed there takes effect at the next connection, without a restart;
* :class:`CurveContext` and :func:`daemon_context` -- the daemon's ``zmq.Context``: a ZAP authenticator thread
  started before any socket, and every socket refscope *binds* in it (``open_socket``) made a CURVE server;
  :meth:`CurveContext.term` stops the authenticator first;
* :func:`client_context` -- a context whose every socket is a CURVE client (the TUI's), and
  :func:`is_loopback_endpoint` -- what counts as "this host only".
"""
from __future__ import annotations

import ipaddress
import logging
import os
import re
import shutil
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator

from ..atomic import atomic_write_bytes
from ..errors import ConfigError, RefscopeError

__all__ = [
    "SECURITY_LOGGER",
    "SERVER_NAME",
    "PUBLIC_SUFFIX",
    "SECRET_SUFFIX",
    "CurveServerKeys",
    "CurveClientKeys",
    "AuthorizedKeys",
    "CurveContext",
    "check_authorized_folder",
    "generate_keypair",
    "authorize_key",
    "load_public_key",
    "load_secret_key",
    "load_server_keys",
    "load_client_keys",
    "start_authenticator",
    "daemon_context",
    "client_context",
    "endpoint_host",
    "is_loopback_endpoint",
]

SECURITY_LOGGER = "refscope.security"
_log = logging.getLogger(SECURITY_LOGGER)

SERVER_NAME = "server"
"""Name of the daemon's key pair in ``security.curve_dir``: ``server.key`` and ``server.key_secret``."""
PUBLIC_SUFFIX = ".key"
SECRET_SUFFIX = ".key_secret"

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")
_Z85_RE = re.compile(rb"^[0-9a-zA-Z.\-:+=^!/*?&<>()\[\]{}@%$#]{40}$")
_MAX_KEY_FILE_BYTES = 64 * 1024
_LOCAL_TRANSPORTS = ("ipc", "inproc")
_PUBLIC_BANNER = ("#   ZeroMQ CURVE Public Certificate, written by `refscope keys authorize`\n"
                  "#   (the public key of a client allowed to connect to this refscope daemon)\n\n")


# ------------------------------------------------------------------------------------------------ keys


@dataclass(frozen=True, repr=False)
class CurveServerKeys:
    """The daemon's key pair (Z85, 40 bytes each). :meth:`apply` makes a socket a CURVE server."""

    public: bytes
    secret: bytes

    def apply(self, sock: zmq.Socket) -> None:
        """Set CURVE_SERVER, CURVE_SECRETKEY and CURVE_PUBLICKEY on ``sock`` (before it binds)."""
        sock.setsockopt(zmq.CURVE_SERVER, 1)
        sock.setsockopt(zmq.CURVE_SECRETKEY, self.secret)
        sock.setsockopt(zmq.CURVE_PUBLICKEY, self.public)

    def __repr__(self) -> str:  # never print a secret key
        return f"CurveServerKeys(public={self.public.decode()!r})"


@dataclass(frozen=True, repr=False)
class CurveClientKeys:
    """What a client needs (Z85, 40 bytes each): the daemon's public key and the client's own pair.

    :meth:`apply` (or :meth:`socket_options`) makes a socket a CURVE client of that daemon.
    """

    server_public: bytes
    public: bytes
    secret: bytes

    def socket_options(self) -> dict[int, bytes]:
        """CURVE_SERVERKEY, CURVE_PUBLICKEY and CURVE_SECRETKEY, to set before connecting."""
        return {zmq.CURVE_SERVERKEY: self.server_public, zmq.CURVE_PUBLICKEY: self.public,
                zmq.CURVE_SECRETKEY: self.secret}

    def apply(self, sock: zmq.Socket) -> None:
        """Set the client options on ``sock`` (before it connects)."""
        for option, value in self.socket_options().items():
            sock.setsockopt(option, value)

    def __repr__(self) -> str:  # never print a secret key
        return f"CurveClientKeys(server_public={self.server_public.decode()!r}, public={self.public.decode()!r})"


def _check_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME_RE.match(name) or name.endswith((PUBLIC_SUFFIX, SECRET_SUFFIX)):
        raise RefscopeError(f"key name {name!r} must be 1-100 letters, digits, '_', '.' or '-', start with a letter "
                            f"or digit and not end in {PUBLIC_SUFFIX!r} (it becomes NAME{PUBLIC_SUFFIX} and "
                            f"NAME{SECRET_SUFFIX})")
    return name


def _read_key_file(path: Path) -> tuple[bytes, bytes | None]:
    """(public, secret or None) of a certificate file; RefscopeError naming the file otherwise."""
    try:
        info = path.stat()
    except FileNotFoundError:
        raise RefscopeError(f"{path}: key file not found (create keys with `refscope keys generate DIR`)") from None
    except OSError as exc:
        raise RefscopeError(f"{path}: key file cannot be read ({exc.strerror or exc})") from exc
    if not stat.S_ISREG(info.st_mode):
        raise RefscopeError(f"{path}: is not a key file (a folder or a special file)")
    if info.st_size > _MAX_KEY_FILE_BYTES:
        raise RefscopeError(f"{path}: is {info.st_size} bytes, too large for a ZeroMQ key file")
    try:
        public, secret = zmq.auth.load_certificate(path)
    except ValueError:
        raise RefscopeError(f"{path}: not a ZeroMQ key file (no 'public-key = \"...\"' line)") from None
    except OSError as exc:
        raise RefscopeError(f"{path}: key file cannot be read ({exc.strerror or exc})") from exc
    for what, key in (("public", public), ("secret", secret)):
        if key is not None and not _Z85_RE.match(key):
            raise RefscopeError(f"{path}: the {what} key is not a 40-character Z85 CURVE key")
    return public, secret


def load_public_key(path: str | os.PathLike[str]) -> bytes:
    """The public key (Z85, 40 bytes) in the key file ``path`` (``NAME.key`` or ``NAME.key_secret``)."""
    public, _ = _read_key_file(Path(path))
    return public


def load_secret_key(path: str | os.PathLike[str]) -> tuple[bytes, bytes]:
    """(public, secret) keys (Z85) from the secret key file ``path`` (``NAME.key_secret``).

    Raises RefscopeError naming the file when it is missing, unreadable, malformed or holds no secret key.
    Logs a warning when the file is readable by other users.
    """
    path = Path(path)
    public, secret = _read_key_file(path)
    if secret is None:
        raise RefscopeError(f"{path}: holds only a public key; give the secret key file (NAME{SECRET_SUFFIX})")
    mode = path.stat().st_mode
    if os.name != "nt" and mode & (stat.S_IRWXG | stat.S_IRWXO):
        _log.warning("%s: secret key is accessible by other users (mode %o); run `chmod 600 %s`",
                     path, stat.S_IMODE(mode), path)
    return public, secret


def load_server_keys(curve_dir: str | os.PathLike[str]) -> CurveServerKeys:
    """The daemon's key pair from ``<curve_dir>/server.key_secret``.

    Raises ConfigError (key ``security.curve_dir``) naming the file and its mode when group or others may read
    or write it, RefscopeError naming the file when it is missing, unreadable or malformed.
    """
    path = Path(curve_dir) / f"{SERVER_NAME}{SECRET_SUFFIX}"
    mode = _mode(path)
    if mode is not None and mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError(f"{path}: the daemon's secret key is accessible by other users (mode {mode:04o}); run "
                          f"`chmod 600 {path}`, and make a new pair (`refscope keys generate --force`) if it may "
                          "have been read", key="security.curve_dir")
    public, secret = load_secret_key(path)
    return CurveServerKeys(public=public, secret=secret)


def load_client_keys(server_key: str | os.PathLike[str], client_key: str | os.PathLike[str]) -> CurveClientKeys:
    """Client keys from the daemon's public key file (``server.key``) and the client's secret key file
    (``NAME.key_secret``)."""
    server_public = load_public_key(server_key)
    public, secret = load_secret_key(client_key)
    return CurveClientKeys(server_public=server_public, public=public, secret=secret)


# ------------------------------------------------------------------------------------- keys on disk


def check_authorized_folder(folder: str | os.PathLike[str]) -> None:
    """Raise ConfigError (key ``security.authorized_clients_dir``) naming ``folder`` and its mode when group or
    others may write to it: they could authorize themselves. A missing folder passes (it authorizes nobody)."""
    path = Path(folder)
    mode = _mode(path)
    if mode is not None and mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise ConfigError(f"{path}: the authorized-clients folder is writable by other users (mode {mode:04o}), "
                          f"who could authorize themselves; run `chmod 700 {path}`",
                          key="security.authorized_clients_dir")


def _mode(path: Path) -> int | None:
    """Permission bits of ``path`` (None: missing, or Windows, where they mean nothing)."""
    if os.name == "nt":
        return None
    try:
        return stat.S_IMODE(path.stat().st_mode)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise RefscopeError(f"{path}: cannot be checked ({exc.strerror or exc})") from exc


def _make_private_folder(folder: Path, what: str) -> None:
    """Create ``folder`` and its missing parents with mode 0700 whatever the umask (existing ones are left as
    they are); RefscopeError naming the folder when that fails."""
    for path in (*reversed(folder.parents), folder):
        if path.is_dir():
            continue
        try:
            os.mkdir(path, 0o700)
        except FileExistsError:
            if path.is_dir():
                continue  # made meanwhile
            raise RefscopeError(f"{path}: is in the way of the {what} (not a folder)") from None
        except OSError as exc:
            raise RefscopeError(f"{path}: cannot create the {what} ({exc.strerror or exc})") from exc
        os.chmod(path, 0o700)  # mkdir's mode is masked by the umask


def generate_keypair(folder: str | os.PathLike[str], name: str = SERVER_NAME, *,
                     force: bool = False) -> tuple[Path, Path]:
    """Create ``<folder>/<name>.key`` (public, mode 0644) and ``<name>.key_secret`` (secret, mode 0600).

    The folder and its missing parents are created with mode 0700, whatever the umask. The pair is written in a
    private temporary folder and then moved in place; an existing key of that name is never replaced unless
    ``force``. Returns (public file, secret file). Raises RefscopeError naming the file that is in the way or the
    folder that cannot be used.
    """
    name = _check_name(name)
    folder = Path(folder)
    public_path, secret_path = folder / f"{name}{PUBLIC_SUFFIX}", folder / f"{name}{SECRET_SUFFIX}"
    _make_private_folder(folder, "key folder")
    if not folder.is_dir():
        raise RefscopeError(f"{folder}: is not a folder")
    if not force:
        for path in (public_path, secret_path):
            if os.path.lexists(path):
                raise RefscopeError(f"{path}: a key already exists; refusing to overwrite it (clients using it would "
                                    "be locked out) -- use --force to replace it, or choose another --name")
    try:
        staging = Path(tempfile.mkdtemp(prefix=f".{name}.keys-", dir=folder))  # mode 0700: private until moved
    except OSError as exc:
        raise RefscopeError(f"{folder}: cannot write keys there ({exc.strerror or exc})") from exc
    try:
        new_public, new_secret = (Path(p) for p in zmq.auth.create_certificates(staging, name))
        os.chmod(new_secret, 0o600)
        os.chmod(new_public, 0o644)
        for new, final in ((new_secret, secret_path), (new_public, public_path)):
            if force:
                os.replace(new, final)
            else:
                os.link(new, final)  # fails if a file appeared meanwhile: never a silent overwrite
    except FileExistsError as exc:
        raise RefscopeError(f"{exc.filename2 or exc.filename}: a key appeared meanwhile; not overwritten") from None
    except OSError as exc:
        raise RefscopeError(f"{folder}: cannot write keys there ({exc.strerror or exc})") from exc
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return public_path, secret_path


def authorize_key(public_key_file: str | os.PathLike[str], folder: str | os.PathLike[str], *,
                  force: bool = False) -> tuple[Path, bool]:
    """Copy a client's public key into the authorized-clients ``folder``, atomically.

    The key is written as ``<folder>/<stem>.key`` (mode 0600) holding only the public key; the folder and its
    missing parents are created with mode 0700, whatever the umask. Refuses a secret key file (a client's secret
    stays with the client), a folder that group or others may write to (the daemon would refuse it too) and,
    unless ``force``, a different key already authorized under that name. Returns (the authorized file, True if
    it was written / False if that key was already there).
    """
    source = Path(public_key_file)
    public, secret = _read_key_file(source)
    if secret is not None:
        raise RefscopeError(f"{source}: is a secret key file; authorize the client's public key "
                            f"({source.name.removesuffix(SECRET_SUFFIX)}{PUBLIC_SUFFIX}) and keep the secret one "
                            "with the client")
    name = _check_name(source.name.removesuffix(PUBLIC_SUFFIX))
    folder = Path(folder)
    target = folder / f"{name}{PUBLIC_SUFFIX}"
    _make_private_folder(folder, "authorized-clients folder")
    check_authorized_folder(folder)
    if os.path.lexists(target):
        try:
            existing = load_public_key(target)
        except RefscopeError:
            existing = None
        if existing == public:
            return target, False
        if not force:
            raise RefscopeError(f"{target}: another key is already authorized under this name; refusing to "
                                "overwrite it -- use --force to replace it, or rename the client's key file")
    try:  # written in a private folder, made 0600, then moved in place: never writable by others, even briefly
        staging = Path(tempfile.mkdtemp(prefix=f".{name}.authorize-", dir=folder))
    except OSError as exc:
        raise RefscopeError(f"{target}: cannot be written ({exc.strerror or exc})") from exc
    try:
        staged = staging / target.name
        atomic_write_bytes(staged, (_PUBLIC_BANNER + f'curve\n    public-key = "{public.decode()}"\n').encode())
        os.chmod(staged, 0o600)
        os.replace(staged, target)
    except OSError as exc:
        raise RefscopeError(f"{target}: cannot be written ({exc.strerror or exc})") from exc
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target, True


# ------------------------------------------------------------------------------------- authentication


class AuthorizedKeys:
    """The public keys in an authorized-clients folder (``*.key``), for the ZAP authenticator's callback.

    The folder's listing (names, sizes, modification times) is checked at every connection attempt and the keys
    re-read when it changed: adding or removing a key file takes effect at the next connection. Unreadable or
    malformed files are logged and skipped; a missing folder authorizes nobody.
    """

    def __init__(self, folder: str | os.PathLike[str]) -> None:
        self.folder = Path(folder)
        self._signature: tuple[tuple[str, int, int], ...] | None = None
        self._keys: frozenset[bytes] = frozenset()
        self._denied_logged: set[bytes] = set()

    def _listing(self) -> tuple[tuple[str, int, int], ...]:
        entries = []
        try:
            for path in self.folder.glob(f"*{PUBLIC_SUFFIX}"):
                try:
                    info = path.stat()
                except OSError:
                    continue
                entries.append((path.name, info.st_size, info.st_mtime_ns))
        except OSError:
            return ()
        return tuple(sorted(entries))

    def keys(self) -> frozenset[bytes]:
        """The authorized public keys (Z85), re-read if the folder changed."""
        listing = self._listing()
        if listing != self._signature:
            keys = set()
            for name, _, _ in listing:
                try:
                    keys.add(load_public_key(self.folder / name))
                except RefscopeError as exc:
                    _log.warning("authorized client key skipped: %s", exc)
            if not keys:
                _log.warning("%s: no authorized client keys; every client is refused (add one with "
                             "`refscope keys authorize CLIENT.key --to %s`)", self.folder, self.folder)
            self._signature, self._keys = listing, frozenset(keys)
        return self._keys

    def callback(self, domain: str, key: bytes) -> bool:
        """ZAP credentials callback (authenticator thread): True when the client's Z85 public ``key`` is
        authorized. Never raises (a failure refuses the client)."""
        try:
            allowed = key in self.keys()
        except Exception:  # noqa: BLE001 - the authenticator thread must survive anything
            _log.exception("checking a client key against %s failed; client refused", self.folder)
            return False
        if not allowed and key not in self._denied_logged and len(self._denied_logged) < 1000:
            self._denied_logged.add(key)
            _log.warning("refused a client whose key %s is not in %s", key.decode(errors="replace"), self.folder)
        return allowed


def start_authenticator(context: zmq.Context, authorized_dir: str | os.PathLike[str]) -> ThreadAuthenticator:
    """Start a ZAP authenticator thread for ``context`` accepting the CURVE clients whose public keys are in
    ``authorized_dir`` (all domains). Start it before binding the sockets; stop it before terminating the
    context."""
    authenticator = ThreadAuthenticator(context, log=logging.getLogger(f"{SECURITY_LOGGER}.zap"))
    authenticator.start()
    authenticator.configure_curve_callback(domain="*", credentials_provider=AuthorizedKeys(authorized_dir))
    return authenticator


class CurveContext(zmq.Context):
    """A ``zmq.Context`` whose bound refscope endpoints are CURVE servers checked by a ZAP authenticator.

    :func:`~refscope.daemon.wire.sockets.open_socket` applies :attr:`server_keys` to every socket it *binds* in
    this context (sockets that connect elsewhere, e.g. the reference hook's PUSH, stay plain). :meth:`term`
    stops the authenticator thread, then terminates the context. Build it with :func:`daemon_context`.
    """

    server_keys: CurveServerKeys | None = None
    authenticator: ThreadAuthenticator | None = None

    def stop_authenticator(self) -> None:
        """Stop the authenticator thread (idempotent); new clients are then refused."""
        authenticator, self.authenticator = self.authenticator, None
        if authenticator is not None:
            try:
                authenticator.stop()
            except zmq.ZMQError as exc:  # its pipe was closed by destroy(): the thread ends with the context
                _log.debug("authenticator stop: %s", exc)

    def term(self) -> None:
        """Stop the authenticator, then terminate the context (blocks until every socket is closed)."""
        self.stop_authenticator()
        super().term()


def daemon_context(curve_dir: Path | None, authorized_clients_dir: Path | None,
                   listening: list[tuple[str, str]]) -> zmq.Context:
    """The daemon's ``zmq.Context``, secured as ``security.curve_dir`` / ``security.authorized_clients_dir`` say.

    With ``curve_dir`` set: a :class:`CurveContext` holding the server keys, its authenticator already running (so
    every endpoint bound in it requires an authorized CURVE client). Without: a plain context; each non-loopback
    endpoint of ``listening`` ((config key, endpoint) of every endpoint the daemon binds; only possible with
    ``security.allow_insecure_remote``) is logged as an error-level warning at every start. Raises RefscopeError
    naming the key file when the keys cannot be loaded, ConfigError naming the path and its mode when the secret key
    or the authorized-clients folder is open to other users.
    """
    if curve_dir is None:
        for key, endpoint in listening:
            if not is_loopback_endpoint(endpoint):
                _log.error("SECURITY: %s = %s accepts connections from other hosts WITHOUT authentication or "
                           "encryption (security.allow_insecure_remote = true): anyone who can reach it gets the "
                           "frames and can control the daemon; configure security.curve_dir instead", key, endpoint)
        return zmq.Context()
    assert authorized_clients_dir is not None  # checked by SecurityConfig
    keys = load_server_keys(curve_dir)
    check_authorized_folder(authorized_clients_dir)
    context = CurveContext()
    context.server_keys = keys
    try:
        context.authenticator = start_authenticator(context, authorized_clients_dir)
    except BaseException:
        context.term()
        raise
    authorized = AuthorizedKeys(authorized_clients_dir).keys()
    _log.info("CURVE security on: server key %s, %d authorized client key(s) in %s", keys.public.decode(),
              len(authorized), authorized_clients_dir)
    return context


def client_context(keys: CurveClientKeys | None = None) -> zmq.Context:
    """A ``zmq.Context`` whose every socket is a CURVE client with ``keys`` (plain when None): for clients such
    as the TUI, all of whose sockets talk to one daemon."""
    context = zmq.Context()
    if keys is not None:
        for option, value in keys.socket_options().items():
            context.setsockopt(option, value)
    return context


# ------------------------------------------------------------------------------------------ endpoints


def endpoint_host(endpoint: str) -> str | None:
    """The host part of a ``tcp://``/``ws://``/``wss://`` endpoint (brackets of IPv6 removed), else None."""
    match = re.match(r"^(tcp|ws|wss)://([^/]*)", endpoint)
    if not match:
        return None
    address = match.group(2).rsplit(";", 1)[-1]  # "source;destination" (connect only): the destination
    if address.startswith("["):
        return address[1:address.find("]")] if "]" in address else address[1:]
    return address.rsplit(":", 1)[0] if ":" in address else address


def is_loopback_endpoint(endpoint: str) -> bool:
    """True when ``endpoint`` can only be reached from this host: ``ipc://``, ``inproc://``, or a TCP/WebSocket
    address in 127.0.0.0/8, ``::1`` or ``localhost``. Wildcards (``*``, ``0.0.0.0``, ``::``), other addresses,
    interface and host names, and multicast transports count as reachable from other hosts."""
    transport = endpoint.split("://", 1)[0].lower() if "://" in endpoint else ""
    if transport in _LOCAL_TRANSPORTS:
        return True
    host = endpoint_host(endpoint)
    if host is None:
        return False
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.split("%", 1)[0]).is_loopback
    except ValueError:
        return False
