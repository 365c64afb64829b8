"""Security (issue 8): loopback by default, CURVE on other binds, no path escapes, oversize messages refused.

One real :class:`Daemon` (module fixture) binds every endpoint to all interfaces (``tcp://0.0.0.0:*`` /
``tcp://*:*``) with CURVE keys configured; the tests connect through 127.0.0.1 as a client without keys, with an
unauthorized key pair and with an authorized one, and check what each of them gets: only the authorized client
gets replies, frames and events, and only its frames are ingested.
"""
from __future__ import annotations

import json
import os
import stat
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zmq

from refscope.daemon.cli import main
from refscope.daemon.config import ConfigError, SecurityConfig, config_to_toml, load_config
from refscope.daemon.wire.control import ControlClient, ControlTimeout
from refscope.daemon.wire.curve import (AuthorizedKeys, CurveClientKeys, authorize_key, client_context, generate_keypair,
                                   is_loopback_endpoint, load_client_keys, load_public_key, load_server_keys)
from refscope.daemon.errors import RefscopeError
from refscope.daemon.wire.protocol import encode_frame, stream_role
from refscope.daemon.publish import FolderPublisher, output_names, output_stem
from refscope.daemon.service.reference_hooks import FileHook, request_file_name
from refscope.daemon.service.daemon import Daemon
from refscope.daemon.wire.sockets import open_socket
from waiting import wait_for

INGEST_LIMIT = 256 * 1024  # ingest.zmq_max_message_bytes of the test daemon
NO_REPLY_S = 0.6  # how long a refused client waits for something that must not come


# ------------------------------------------------------------------------------------------------ helpers


@dataclass
class Keys:
    curve_dir: Path
    authorized_dir: Path
    server_public: Path
    operator: CurveClientKeys  # authorized
    intruder: CurveClientKeys  # a valid key pair, right server key, not authorized
    intruder_public: Path


def make_keys(root: Path) -> Keys:
    curve_dir, authorized = root / "curve", root / "authorized"
    server_public, _ = generate_keypair(curve_dir)
    op_public, op_secret = generate_keypair(root / "operator", "operator")
    bad_public, bad_secret = generate_keypair(root / "intruder", "intruder")
    authorize_key(op_public, authorized)
    return Keys(curve_dir, authorized, server_public, load_client_keys(server_public, op_secret),
                load_client_keys(server_public, bad_secret), bad_public)


def local(endpoint: str) -> str:
    """A wildcard bind address (``tcp://0.0.0.0:P``) as the address a client on this host connects to."""
    assert endpoint.startswith("tcp://0.0.0.0:"), endpoint  # the test daemon really listens on all interfaces
    return "tcp://127.0.0.1:" + endpoint.rsplit(":", 1)[1]


def frame_parts(seq: int, shape: tuple[int, int] = (96, 128), **extra_header: Any) -> list[bytes]:
    image = np.random.default_rng(seq).random(shape).astype(np.float32)
    parts = encode_frame(image, seq=seq, pixel_size_m=10e-9, role="lr")
    if extra_header:
        header = json.loads(bytes(parts[0]))
        header.update(extra_header)
        parts = [json.dumps(header).encode(), parts[1]]
    return parts


class Sub:
    """A SUB socket (plain or CURVE client) counting what it receives."""

    def __init__(self, context: zmq.Context, endpoint: str, curve: CurveClientKeys | None, topic: bytes = b"") -> None:
        self.socket, _ = open_socket(context, zmq.SUB, endpoint, options={zmq.SUBSCRIBE: topic}, bind=False,
                                     what="test subscriber", curve=curve)
        self.messages: list[list[bytes]] = []

    def drain(self) -> list[list[bytes]]:
        while self.socket.poll(0):
            self.messages.append(self.socket.recv_multipart())
        return self.messages

    def close(self) -> None:
        self.socket.close(linger=0)


def push(context: zmq.Context, endpoint: str, curve: CurveClientKeys | None) -> zmq.Socket:
    sock, _ = open_socket(context, zmq.PUSH, endpoint, options={zmq.SNDHWM: 4}, bind=False, what="test sender",
                          curve=curve)
    return sock


def status(daemon: Daemon, keys: Keys) -> dict[str, Any]:
    with ControlClient(local(daemon.endpoints["control"]), timeout_s=5.0, curve=keys.operator) as client:
        return client.call("status")["status"]


@dataclass
class Secured:
    daemon: Daemon
    keys: Keys
    root: Path
    out: Path
    state: Path


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Secured]:
    root = tmp_path_factory.mktemp("secured")
    keys = make_keys(root / "keys")
    out, state = root / "out", root / "state"
    config = load_config(None, {
        "ingest.zmq_endpoint": "tcp://0.0.0.0:*", "ingest.zmq_max_message_bytes": str(INGEST_LIMIT),
        "publish.pub_endpoint": "tcp://*:*", "control.endpoint": "tcp://0.0.0.0:*",
        "control.events_endpoint": "tcp://0.0.0.0:*", "publish.out_dir": str(out), "state_dir": str(state),
        "model.library_size": "2000", "monitor.request_without_model": "false",
        "security.curve_dir": str(keys.curve_dir), "security.authorized_clients_dir": str(keys.authorized_dir)})
    daemon = Daemon(config)
    daemon.start()
    try:
        yield Secured(daemon, keys, root, out, state)
    finally:
        daemon.stop()


@pytest.fixture()
def context() -> Iterator[zmq.Context]:
    ctx = zmq.Context()
    yield ctx
    ctx.destroy(linger=0)


# ------------------------------------------------------------------------------- (a, b) who gets what


def test_only_an_authorized_client_gets_control_replies(secured: Secured, context: zmq.Context) -> None:
    endpoint = local(secured.daemon.endpoints["control"])
    keys = secured.keys
    wrong_server = CurveClientKeys(server_public=keys.intruder.public, public=keys.operator.public,
                                   secret=keys.operator.secret)
    for curve in (None, keys.intruder, wrong_server):
        with ControlClient(endpoint, timeout_s=NO_REPLY_S, context=context, curve=curve) as client:
            with pytest.raises(ControlTimeout):
                client.request("status")
            with pytest.raises(ControlTimeout):
                client.request("pause")  # no control either
    with ControlClient(endpoint, timeout_s=5.0, context=context, curve=keys.operator) as client:
        reply = client.call("status")
    assert reply["status"]["paused"] is False  # the refused "pause" requests never reached the daemon
    assert secured.daemon.control is not None
    assert secured.daemon.control.stats().refused == 0


def test_only_an_authorized_client_gets_frames_and_events_and_can_send_frames(
        secured: Secured, context: zmq.Context) -> None:
    daemon, keys = secured.daemon, secured.keys
    ep = {name: local(endpoint) for name, endpoint in daemon.endpoints.items() if endpoint}
    clients = {"plain": None, "intruder": keys.intruder, "operator": keys.operator}
    frames = {name: Sub(context, ep["pub"], curve) for name, curve in clients.items()}
    events = {name: Sub(context, ep["events"], curve, b"event") for name, curve in clients.items()}
    try:
        before = status(daemon, keys)["frames"]["in"]
        for name in ("plain", "intruder"):  # frames from refused senders never arrive
            sender = push(context, ep["zmq_ingest"], clients[name])
            time.sleep(0.2)
            try:
                sender.send_multipart(frame_parts(100), flags=zmq.NOBLOCK)  # queued at most: no handshake completes
            except zmq.Again:
                pass
            time.sleep(NO_REPLY_S)
            sender.close(linger=0)
        assert status(daemon, keys)["frames"]["in"] == before
        sender = push(context, ep["zmq_ingest"], keys.operator)
        seq = 0
        roles: set[str] = set()
        kinds: set[str] = set()

        def operator_has_everything() -> bool:
            nonlocal seq
            seq += 1
            sender.send_multipart(frame_parts(seq))  # the authorized sender's frames are ingested and streamed
            with ControlClient(ep["control"], timeout_s=5.0, context=context, curve=keys.operator) as client:
                client.call("pause")
                client.call("resume")
            roles.update(stream_role(parts) for parts in frames["operator"].drain())
            kinds.update(json.loads(parts[1])["type"] for parts in events["operator"].drain())
            return "enhanced" in roles and {"paused", "resumed"} <= kinds

        wait_for(operator_has_everything, 20, "the authorized client's enhanced frames and pause/resume events")
        assert status(daemon, keys)["frames"]["in"] > before
        for name in ("plain", "intruder"):
            assert frames[name].drain() == [] and events[name].drain() == [], name
        sender.close(linger=0)
    finally:
        for sub in (*frames.values(), *events.values()):
            sub.close()


def test_authorized_folder_changes_take_effect_at_the_next_connection(secured: Secured, context: zmq.Context) -> None:
    endpoint, keys = local(secured.daemon.endpoints["control"]), secured.keys
    target, written = authorize_key(keys.intruder_public, keys.authorized_dir)
    assert written
    try:
        with ControlClient(endpoint, timeout_s=5.0, context=context, curve=keys.intruder) as client:
            assert client.call("ping")["pong"] is True
    finally:
        target.unlink()
    with ControlClient(endpoint, timeout_s=NO_REPLY_S, context=context, curve=keys.intruder) as client, \
            pytest.raises(ControlTimeout):
        client.request("ping")  # revoked


def test_a_tui_context_is_a_curve_client_on_every_socket(secured: Secured) -> None:
    context = client_context(secured.keys.operator)
    try:
        with ControlClient(local(secured.daemon.endpoints["control"]), timeout_s=5.0, context=context) as client:
            assert client.call("ping")["pong"] is True
    finally:
        context.term()


# ------------------------------------------------------------------------------------------ (f) oversize


def test_oversize_control_requests_are_refused_and_the_daemon_keeps_answering(secured: Secured,
                                                                             context: zmq.Context) -> None:
    endpoint, keys = local(secured.daemon.endpoints["control"]), secured.keys
    with ControlClient(endpoint, timeout_s=5.0, context=context, curve=keys.operator) as client:
        reply = client.send_raw([b" " * (100 * 1024)])  # above max_request_bytes: answered, refused
        assert reply["ok"] is False and "at most 65536" in reply["error"]
        with pytest.raises(ControlTimeout):  # above ZMQ_MAXMSGSIZE (16x): cut off by libzmq, never read
            client.send_raw([b" " * (2 << 20)], timeout=NO_REPLY_S)
        assert client.call("ping")["pong"] is True
    assert status(secured.daemon, keys)["frames"] is not None


def test_oversize_ingest_frames_are_refused_and_ingest_goes_on(secured: Secured, context: zmq.Context) -> None:
    daemon, keys = secured.daemon, secured.keys
    endpoint = local(daemon.endpoints["zmq_ingest"])
    before = status(daemon, keys)["frames"]["in"]
    big = push(context, endpoint, keys.operator)
    big.send_multipart(frame_parts(1, shape=(512, 512)))  # 1 MiB > INGEST_LIMIT: the sender is disconnected
    time.sleep(NO_REPLY_S)
    big.close(linger=0)
    assert status(daemon, keys)["frames"]["in"] == before
    small = push(context, endpoint, keys.operator)
    small.send_multipart(frame_parts(2))
    wait_for(lambda: status(daemon, keys)["frames"]["in"] == before + 1, 10, "the next frame ingested")
    small.close(linger=0)


# -------------------------------------------------------------------------------------- (e) path escapes


HOSTILE_SOURCES = ["../../etc/x", "/etc/passwd", "..", ".", "", "zmq:../../x#1", "a/../../b", "..\\..\\win.ini",
                   "C:\\Windows\\x.tif", "zmq:tcp://h:1#../../../y", "x\x00/../../z", "~/.bashrc", "/" * 300]


@pytest.mark.parametrize("source", HOSTILE_SOURCES)
def test_output_names_stay_in_their_folder(tmp_path: Path, source: str) -> None:
    stem = output_stem(source)
    assert stem and stem not in (".", "..") and "/" not in stem and "\\" not in stem and "\x00" not in stem
    for name in output_names(stem, 2, 7):
        assert (tmp_path / name).resolve().parent == tmp_path.resolve()
    assert (tmp_path / request_file_name({"id": source})).resolve().parent == tmp_path.resolve()


def _files_under(root: Path) -> set[Path]:
    return {p for p in root.rglob("*") if p.is_file()}


def test_hostile_sources_are_written_inside_the_output_and_hook_folders(tmp_path: Path) -> None:
    out, hooks = tmp_path / "deep" / "out", tmp_path / "deep" / "requests"
    with FolderPublisher(out) as publisher:
        for i, source in enumerate(HOSTILE_SOURCES):
            assert publisher.submit(np.zeros((8, 8), np.float32), source=source, t=float(i), scale=2,
                                    pixel_size_nm=1.0)
    hook = FileHook(hooks)
    for source in HOSTILE_SOURCES:
        hook.deliver({"id": source, "reason": "operator"})
    assert publisher.stats().written == len(HOSTILE_SOURCES)
    files = _files_under(tmp_path)
    assert files and all(p.parent in (out, hooks) for p in files), sorted(map(str, files))


def test_hostile_header_fields_of_a_zmq_frame_cannot_move_its_output(secured: Secured, context: zmq.Context) -> None:
    daemon, keys = secured.daemon, secured.keys
    canary = secured.root / "escaped"
    hostile = {"name": "../../escaped/x", "source": "/tmp/refscope-escape", "path": str(canary / "y.tif"),
               "filename": "../../../escaped.tif", "stem": "..", "out_dir": str(canary)}
    before = status(daemon, keys)["frames"]["out"]
    sender = push(context, local(daemon.endpoints["zmq_ingest"]), keys.operator)
    sender.send_multipart(frame_parts(4242, **hostile))
    wait_for(lambda: status(daemon, keys)["frames"]["out"] > before, 15, "the hostile frame enhanced")
    sender.close(linger=0)
    outputs = {p.name for p in secured.out.iterdir() if p.name.endswith("#4242_x2.tif") or "4242_x2" in p.name}
    assert outputs, sorted(p.name for p in secured.out.iterdir())
    allowed = (secured.out, secured.state, secured.root / "keys")
    strays = [p for p in _files_under(secured.root) if not any(a in p.parents for a in allowed)]
    assert strays == [] and not canary.exists() and not Path("/tmp/refscope-escape").exists()


def test_config_paths_cannot_put_outputs_in_the_watched_folder(tmp_path: Path) -> None:
    watch = tmp_path / "watch"
    watch.mkdir()
    for key in ("publish.out_dir", "state_dir", "monitor.hook_dir"):
        extra = {"monitor.hook": "file"} if key == "monitor.hook_dir" else {}
        with pytest.raises(ConfigError, match="inside the watched folder") as info:
            load_config(None, {"ingest.watch": str(watch), key: str(watch / "sub" / ".." / "x"), **extra})
        assert info.value.key == key


# ----------------------------------------------------------------------------------------- (c) config


@pytest.mark.parametrize("endpoint, loopback", [
    ("tcp://127.0.0.1:5560", True), ("tcp://127.3.2.1:*", True), ("tcp://localhost:5560", True),
    ("tcp://[::1]:5560", True), ("ipc:///tmp/refscope.sock", True), ("inproc://control", True),
    ("tcp://*:5560", False), ("tcp://0.0.0.0:5560", False), ("tcp://[::]:5560", False),
    ("tcp://192.168.1.20:5560", False), ("tcp://eth0:5560", False), ("tcp://sem-pc.lab:5560", False),
    ("ws://0.0.0.0:8080/frames", False), ("epgm://eth0;239.192.1.1:5555", False),
])
def test_what_counts_as_loopback(endpoint: str, loopback: bool) -> None:
    assert is_loopback_endpoint(endpoint) is loopback


@pytest.mark.parametrize("key, endpoint", [
    ("control.endpoint", "tcp://0.0.0.0:5560"), ("control.events_endpoint", "tcp://*:5562"),
    ("publish.pub_endpoint", "tcp://192.168.1.20:5561"), ("ingest.zmq_endpoint", "tcp://[::]:5555"),
])
def test_non_loopback_endpoint_without_keys_is_refused(tmp_path: Path, key: str, endpoint: str) -> None:
    overrides = {"ingest.watch": str(tmp_path), key: endpoint}
    with pytest.raises(ConfigError) as info:
        load_config(None, overrides)
    assert info.value.key == key
    message = str(info.value)
    assert key in message and endpoint in message and "refscope keys generate" in message
    assert "security.curve_dir" in message and "command-line overrides" in message
    insecure = load_config(None, {**overrides, "security.allow_insecure_remote": "true"})  # explicit opt-out
    assert insecure.security.allow_insecure_remote is True


def test_security_section_checks_and_round_trip(tmp_path: Path) -> None:
    keys = make_keys(tmp_path / "keys")
    base = {"ingest.watch": str(tmp_path), "control.endpoint": "tcp://0.0.0.0:5560"}
    with pytest.raises(ConfigError, match="authorized_clients_dir is not") as info:
        load_config(None, {**base, "security.curve_dir": str(keys.curve_dir)})
    assert info.value.key == "security.authorized_clients_dir"
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ConfigError, match=r"has no server.key_secret: .*refscope keys generate") as info:
        load_config(None, {**base, "security.curve_dir": str(empty), "security.authorized_clients_dir": str(empty / "a")})
    assert info.value.key == "security.curve_dir"
    with pytest.raises(ConfigError, match="own key"):
        SecurityConfig(curve_dir=keys.curve_dir, authorized_clients_dir=keys.curve_dir)
    config = load_config(None, {**base, "security.curve_dir": str(keys.curve_dir),
                                "security.authorized_clients_dir": str(keys.authorized_dir)})
    text = config_to_toml(config)
    assert "[security]" in text and f'curve_dir = "{keys.curve_dir}"' in text
    path = tmp_path / "refscope.toml"
    path.write_text(text, encoding="utf-8")
    assert load_config(path) == config
    default_text = config_to_toml(load_config(None, {"ingest.watch": str(tmp_path)}))
    assert "# curve_dir = " in default_text and "allow_insecure_remote = false" in default_text


def _keyed_config(tmp_path: Path, keys: Any) -> Any:
    """A loopback daemon configuration with CURVE keys from ``keys``."""
    return load_config(None, {"ingest.watch": str(tmp_path / "w"), "state_dir": str(tmp_path / "s"),
                              "control.endpoint": "tcp://127.0.0.1:*", "control.events_endpoint": "tcp://127.0.0.1:*",
                              "publish.pub_endpoint": "tcp://127.0.0.1:*", "security.curve_dir": str(keys.curve_dir),
                              "security.authorized_clients_dir": str(keys.authorized_dir)})


def test_daemon_with_unreadable_keys_refuses_to_start(tmp_path: Path) -> None:
    keys = make_keys(tmp_path / "keys")
    config = _keyed_config(tmp_path, keys)
    (keys.curve_dir / "server.key_secret").write_text('curve\n    public-key = "too short"\n')
    with pytest.raises(RefscopeError, match=r"server.key_secret: the public key is not a 40-character Z85"):
        Daemon(config).start()


@pytest.mark.skipif(os.name == "nt", reason="POSIX permissions")
def test_daemon_refuses_keys_other_users_can_touch(tmp_path: Path) -> None:
    """Issue 13.6: a world-writable authorized-clients folder (anyone can authorize themselves) was accepted and a
    0644 server secret key only warned."""
    keys = make_keys(tmp_path / "keys")
    config = _keyed_config(tmp_path, keys)
    secret = keys.curve_dir / "server.key_secret"
    for mode in (0o640, 0o604, 0o620):
        os.chmod(secret, mode)
        with pytest.raises(ConfigError, match=rf"{secret}: .*mode 0{mode:o}.*chmod 600") as info:
            Daemon(config).start()
        assert info.value.key == "security.curve_dir"
    os.chmod(secret, 0o600)
    for mode in (0o777, 0o770, 0o757):
        os.chmod(keys.authorized_dir, mode)
        with pytest.raises(ConfigError, match=rf"{keys.authorized_dir}: .*writable by other users \(mode 0{mode:o}\)"
                           r".*chmod 700") as info:
            Daemon(config).start()
        assert info.value.key == "security.authorized_clients_dir"
    os.chmod(keys.authorized_dir, 0o755)  # readable by others is fine: public keys
    daemon = Daemon(config)
    daemon.start()
    daemon.stop()


# ---------------------------------------------------------------------------------------- (d) keys CLI


def test_keys_generate_writes_a_private_pair_and_never_overwrites(tmp_path: Path, capsys) -> None:
    folder = tmp_path / "curve"
    assert main(["keys", "generate", str(folder)]) == 0
    printed = capsys.readouterr().out
    public, secret = folder / "server.key", folder / "server.key_secret"
    assert str(public) in printed and "security.curve_dir" in printed
    if os.name != "nt":
        assert stat.S_IMODE(secret.stat().st_mode) == 0o600 and stat.S_IMODE(folder.stat().st_mode) == 0o700
    keys = load_server_keys(folder)
    assert keys.public == load_public_key(public) and len(keys.secret) == 40
    assert keys.secret.decode() not in repr(keys)
    before = secret.read_bytes()
    assert main(["keys", "generate", str(folder)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("refscope keys: error: ") and str(public) in err and "--force" in err and "\n" not in err
    assert secret.read_bytes() == before
    assert main(["keys", "generate", str(folder), "--force"]) == 0
    assert secret.read_bytes() != before and load_server_keys(folder).public != keys.public
    assert main(["keys", "generate", str(folder), "--name", "../escape"]) == 2
    assert "key name '../escape'" in capsys.readouterr().err and not (tmp_path / "escape.key").exists()
    assert sorted(p.name for p in folder.iterdir()) == ["server.key", "server.key_secret"]  # no staging left


def test_keys_authorize_copies_public_keys_only(tmp_path: Path, capsys) -> None:
    alice_pub, alice_secret = generate_keypair(tmp_path / "alice", "alice")
    authorized = tmp_path / "authorized"
    assert main(["keys", "authorize", str(alice_pub), "--to", str(authorized)]) == 0
    target = authorized / "alice.key"
    assert f"authorized: {target}" in capsys.readouterr().out
    assert load_public_key(target) == load_public_key(alice_pub) and b"secret" not in target.read_bytes()
    assert AuthorizedKeys(authorized).keys() == {load_public_key(alice_pub)}
    assert main(["keys", "authorize", str(alice_pub), "--to", str(authorized)]) == 0
    assert "already authorized" in capsys.readouterr().out
    assert main(["keys", "authorize", str(alice_secret), "--to", str(authorized)]) == 2
    assert "is a secret key file" in capsys.readouterr().err
    other_pub, _ = generate_keypair(tmp_path / "other", "alice")  # another key under the same name
    assert main(["keys", "authorize", str(other_pub), "--to", str(authorized)]) == 2
    err = capsys.readouterr().err
    assert str(target) in err and "--force" in err
    assert load_public_key(target) == load_public_key(alice_pub)
    assert main(["keys", "authorize", str(other_pub), "--to", str(authorized), "--force"]) == 0
    assert load_public_key(target) == load_public_key(other_pub)
    bad = tmp_path / "bad.key"
    bad.write_text("hello\n")
    for path, needle in ((bad, "not a ZeroMQ key file"), (tmp_path / "missing.key", "key file not found")):
        assert main(["keys", "authorize", str(path), "--to", str(authorized)]) == 2
        err = capsys.readouterr().err
        assert str(path) in err and needle in err
    assert sorted(p.name for p in authorized.iterdir()) == ["alice.key"]


@pytest.mark.skipif(os.name == "nt", reason="POSIX permissions")
def test_keys_commands_write_private_folders_and_files_whatever_the_umask(tmp_path: Path, capsys) -> None:
    """Issue 13.6: under ``umask 000`` ``refscope keys authorize`` made a world-writable clients folder."""
    def mode(path: Path) -> int:
        return stat.S_IMODE(path.stat().st_mode)

    previous = os.umask(0)
    try:
        assert main(["keys", "generate", str(tmp_path / "etc" / "curve")]) == 0
        assert main(["keys", "generate", str(tmp_path / "home" / "alice"), "--name", "alice"]) == 0
        authorized = tmp_path / "srv" / "authorized"
        alice = str(tmp_path / "home" / "alice" / "alice.key")
        assert main(["keys", "authorize", alice, "--to", str(authorized)]) == 0
        open_folder = tmp_path / "open"
        open_folder.mkdir()
        assert mode(open_folder) == 0o777
        assert main(["keys", "authorize", alice, "--to", str(open_folder)]) == 2
    finally:
        os.umask(previous)
    err = capsys.readouterr().err
    assert f"{open_folder}: the authorized-clients folder is writable by other users (mode 0777)" in err
    assert list(open_folder.iterdir()) == []
    for folder in (tmp_path / "etc", tmp_path / "etc" / "curve", tmp_path / "home", tmp_path / "home" / "alice",
                   tmp_path / "srv", authorized):
        assert mode(folder) == 0o700, folder
    assert mode(tmp_path / "etc" / "curve" / "server.key_secret") == 0o600
    assert mode(tmp_path / "home" / "alice" / "alice.key_secret") == 0o600
    assert mode(tmp_path / "etc" / "curve" / "server.key") == 0o644  # the public key, made to be handed out
    assert [(p.name, mode(p)) for p in authorized.iterdir()] == [("alice.key", 0o600)]  # no staging folder left
    assert AuthorizedKeys(authorized).keys() == {load_public_key(tmp_path / "home" / "alice" / "alice.key")}


def test_tui_key_options_are_checked_before_the_ui_starts(tmp_path: Path, capsys) -> None:
    server_pub, _ = generate_keypair(tmp_path, "server")
    assert main(["tui", "--curve-server-key", str(server_pub)]) == 2
    assert "go together" in capsys.readouterr().err
    missing = tmp_path / "nobody.key_secret"
    assert main(["tui", "--curve-server-key", str(server_pub), "--curve-client-key", str(missing)]) == 2
    assert str(missing) in capsys.readouterr().err
    assert main(["tui", "--curve-server-key", str(server_pub), "--curve-client-key", str(server_pub)]) == 2
    assert "holds only a public key" in capsys.readouterr().err
