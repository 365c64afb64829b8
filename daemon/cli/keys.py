"""``refscope keys``: CURVE key pairs for the daemon and its clients (see :mod:`refscope.daemon.wire.curve`).

::

    refscope keys generate DIR [--name NAME] [--force]     # NAME.key (public) + NAME.key_secret (secret, 0600)
    refscope keys authorize PUBLIC_KEY_FILE --to DIR [--force]

Typical set-up: on the daemon's host ``refscope keys generate /etc/refscope/curve`` (the daemon's pair,
``server``) and ``security.curve_dir = "/etc/refscope/curve"``; on each operator's machine ``refscope keys
generate ~/.refscope --name alice``; alice's ``alice.key`` goes to the daemon's host, where ``refscope keys
authorize alice.key --to /etc/refscope/authorized_clients`` admits her; ``server.key`` goes to alice, who runs
``refscope tui --connect tcp://HOST:5560 --curve-server-key server.key --curve-client-key ~/.refscope/alice.key_secret``.

Whatever the umask, folders are created with mode 0700 and secret keys and authorized keys written with mode 0600
(a generated public key, made to be handed out, 0644); ``authorize`` refuses a folder that group or others may
write to (the daemon refuses to start with one).

Bad input (a missing or malformed key file, a key that is already there) ends the command with one line naming
the file on stderr and exit code 2. Existing keys are never overwritten without ``--force``.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ..wire.curve import PUBLIC_SUFFIX, SERVER_NAME, authorize_key, generate_keypair

__all__ = ["add_keys_parser", "run_keys_command"]


def add_keys_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``keys`` subcommand (with ``generate`` and ``authorize``) to ``subparsers``; its handler
    (``args.handler``) is :func:`run_keys_command`. Returns the subparser."""
    p = subparsers.add_parser(
        "keys", help="CURVE keys: generate key pairs, authorize a client's public key",
        description="Endpoints bound beyond 127.0.0.1 require CURVE authentication. `generate` makes a key pair "
        "(the daemon's is named 'server'); `authorize` admits a client by copying its public key into the "
        "daemon's security.authorized_clients_dir.")
    p.add_argument("-v", "--verbose", action="count", default=argparse.SUPPRESS, help="log more")
    actions = p.add_subparsers(dest="keys_action", metavar="ACTION", required=True)
    gen = actions.add_parser("generate", help="create NAME.key (public) and NAME.key_secret (secret) in DIR",
                             description="Create a CURVE key pair in DIR (created, mode 0700, if missing): "
                             "NAME.key, the public key to hand out, and NAME.key_secret (mode 0600), which never "
                             "leaves this machine. An existing pair is not overwritten unless --force.")
    gen.add_argument("dir", metavar="DIR", type=Path, help="folder for the key files")
    gen.add_argument("--name", default=SERVER_NAME,
                     help=f"key name (default {SERVER_NAME!r}: the daemon's own pair, for security.curve_dir)")
    gen.add_argument("--force", action="store_true", help="replace an existing pair (its clients are locked out)")
    auth = actions.add_parser("authorize", help="admit a client: copy its public key into the authorized folder",
                              description="Copy a client's public key file (NAME.key) into DIR, the daemon's "
                              "security.authorized_clients_dir, atomically (mode 0600; DIR is created, mode 0700, "
                              "if missing, and refused if group or others may write to it). The daemon notices it at "
                              "the next connection; delete the file to revoke the client.")
    auth.add_argument("public_key", metavar="PUBLIC_KEY_FILE", type=Path, help="the client's NAME.key")
    auth.add_argument("--to", dest="to", metavar="DIR", type=Path, required=True,
                      help="the daemon's authorized-clients folder (security.authorized_clients_dir)")
    auth.add_argument("--force", action="store_true", help="replace another key authorized under the same name")
    p.set_defaults(handler=run_keys_command)
    return p


def _generate(args: argparse.Namespace) -> int:
    public, secret = generate_keypair(args.dir, args.name, force=args.force)
    print(f"public key: {public}")
    print(f"secret key: {secret} (mode 0600; keep it on this machine, never copy it)")
    if args.name == SERVER_NAME:
        print(f"daemon: set security.curve_dir = \"{public.parent.resolve()}\" and security.authorized_clients_dir = a "
              "folder of client keys (`refscope keys authorize CLIENT.key --to FOLDER`)")
        print(f"clients: give them {public}; they connect with --curve-server-key {public.name}")
    else:
        print(f"authorize it on the daemon's host: refscope keys authorize {public.name} --to "
              "AUTHORIZED_CLIENTS_DIR")
        print(f"then connect: refscope tui --connect tcp://HOST:5560 --curve-server-key server.key "
              f"--curve-client-key {secret}")
    return 0


def _authorize(args: argparse.Namespace) -> int:
    target, written = authorize_key(args.public_key, args.to, force=args.force)
    if written:
        print(f"authorized: {target} (the daemon accepts this client from its next connection)")
    else:
        print(f"already authorized: {target}")
    print(f"revoke: delete {target} (any *{PUBLIC_SUFFIX} file there is a client the daemon accepts)")
    return 0


def run_keys_command(args: argparse.Namespace) -> int:
    """Handler of ``refscope keys``: run ``generate`` or ``authorize``; RefscopeError (naming the file) for bad
    input, turned into one stderr line and exit code 2 by ``refscope``'s ``main``."""
    if args.keys_action == "generate":
        return _generate(args)
    return _authorize(args)
