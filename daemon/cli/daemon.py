"""``refscope daemon``: argument handling and the foreground run of the service (:class:`~refscope.daemon.service.daemon.Daemon`).

::

    refscope daemon [--config F] [--watch DIR] [--zmq tcp://...] [--out DIR] [--state DIR] [--scale S]
                    [--method M] [--library-size L] [--pixel-size NM] [--hr-pattern GLOB] [--lr-pattern GLOB]
                    [--polling] [--control EP] [--pub EP] [--events EP] [--log-level L] [--print-config]
                    [--no-train] [--train-round-s S]

Every option is an override of one configuration key (:mod:`refscope.daemon.config`), so ``refscope daemon --watch DIR --out
DIR`` works without a configuration file. A configuration problem ends the command with one line
``refscope daemon: error: <key>: <problem>`` on stderr and exit code 2; so does an endpoint that cannot be bound
or a state folder that cannot be used. At start the bound endpoints are printed on stdout, one ``name
endpoint`` line each, then ``ready``. SIGTERM / Ctrl-C stop the daemon cleanly (exit code 0); exit code 1 means
a component failed (see the log on stderr). Under systemd (``Type=notify``, ``deploy/refscope.service``) it also
sends READY=1 after ``ready``, watchdog pings while every component is healthy, and STOPPING=1 (:mod:`refscope.daemon.service.sd_notify`).

Also runnable as ``python -m refscope.daemon.cli.daemon ...`` (same options).
"""
from __future__ import annotations

import argparse
import logging
import sys
from typing import Any


from ..config import METHODS, ConfigError, DaemonConfig, config_to_toml, load_config
from ..errors import RefscopeError, one_line
from ..service.sd_notify import ServiceNotifications, daemon_status_line

__all__ = ["add_daemon_parser", "run_daemon", "overrides_from_args", "main"]

_log = logging.getLogger("refscope.daemon")

# option dest -> configuration key
_KEYS: dict[str, str] = {
    "watch": "ingest.watch",
    "zmq": "ingest.zmq_endpoint",
    "zmq_pattern": "ingest.zmq_pattern",
    "polling": "ingest.use_polling",
    "pixel_size": "ingest.pixel_size_nm",
    "hr_pattern": "ingest.hr_filename_pattern",
    "lr_pattern": "ingest.lr_filename_pattern",
    "out": "publish.out_dir",
    "state": "state_dir",
    "scale": "model.scale",
    "method": "model.method",
    "library_size": "model.library_size",
    "sigma_n": "model.sigma_n",
    "control": "control.endpoint",
    "pub": "publish.pub_endpoint",
    "events": "control.events_endpoint",
    "log_level": "log_level",
    "train": "trainer.enabled",
    "train_round_s": "trainer.round_s",
}


def add_daemon_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``daemon`` subcommand to ``subparsers`` (from ``ArgumentParser.add_subparsers``); its handler
    (``args.handler``) is :func:`run_daemon`. Returns the subparser."""
    p = subparsers.add_parser(
        "daemon", help="run the live service: enhance every frame, learn from HR references",
        description="Watch an acquisition folder and/or a ZMQ socket, enhance every LR frame with the current "
        "model (TIFFs in --out, ZMQ PUB stream), learn from HR reference scans in the background. Options "
        "override the --config file key by key; endpoints bind 127.0.0.1 unless given otherwise.")
    p.add_argument("-v", "--verbose", action="count", default=argparse.SUPPRESS, help="debug logging")
    p.add_argument("--config", metavar="F.toml", help="TOML configuration file (default: none, options only)")
    p.add_argument("--watch", metavar="DIR", help="acquisition folder to watch (ingest.watch; never modified)")
    p.add_argument("--zmq", metavar="EP", help="endpoint to receive frames on, e.g. tcp://127.0.0.1:5555")
    p.add_argument("--zmq-pattern", choices=("pull", "sub"), help="ZMQ ingest socket type (default pull)")
    p.add_argument("--polling", action="store_const", const="true", help="scan the folder instead of file events")
    p.add_argument("--pixel-size", metavar="NM", help="pixel size of every frame in nm (overrides the files)")
    p.add_argument("--hr-pattern", metavar="GLOB", help="file names of HR reference scans, e.g. '*_HR.tif'")
    p.add_argument("--lr-pattern", metavar="GLOB", help="file names of live LR frames")
    p.add_argument("--out", metavar="DIR", help="folder for enhanced TIFFs (publish.out_dir)")
    p.add_argument("--state", metavar="DIR", help="state folder: catalogue, models (default <out>/.refscope-state)")
    p.add_argument("--scale", metavar="S", help="output scale, 2-8 (model.scale)")
    p.add_argument("--method", choices=METHODS, help="reconstruction method (model.method)")
    p.add_argument("--library-size", metavar="L", help="patch pairs kept in the library (model.library_size)")
    p.add_argument("--sigma-n", metavar="X", help="filtering strength (model.sigma_n)")
    p.add_argument("--control", metavar="EP", help="control endpoint (default tcp://127.0.0.1:5560)")
    p.add_argument("--pub", metavar="EP", help="enhanced-frame PUB endpoint (default tcp://127.0.0.1:5561)")
    p.add_argument("--events", metavar="EP", help="event PUB endpoint (default tcp://127.0.0.1:5562)")
    p.add_argument("--log-level", metavar="L", help="DEBUG, INFO, WARNING or ERROR (default INFO)")
    p.add_argument("--no-train", dest="train", action="store_const", const="false",
                   help="no background network training (trainer.enabled = false)")
    p.add_argument("--train-round-s", metavar="S", help="training seconds per round (trainer.round_s)")
    p.add_argument("--print-config", action="store_true", help="print the effective configuration as TOML and exit")
    p.set_defaults(handler=run_daemon)
    return p


def overrides_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """The configuration overrides given on the command line (unset options left out)."""
    return {key: getattr(args, dest) for dest, key in _KEYS.items() if getattr(args, dest, None) is not None}


def _setup_logging(config: DaemonConfig, verbose: int) -> None:
    level = logging.DEBUG if verbose else getattr(logging, config.log_level)
    root = logging.getLogger()
    if not root.handlers:
        logging.basicConfig(format="%(asctime)s %(name)s %(levelname)s: %(message)s", stream=sys.stderr)
    root.setLevel(level)


def run_daemon(args: argparse.Namespace) -> int:
    """Run ``refscope daemon`` with parsed ``args`` in the foreground; returns the exit code (0 clean stop,
    1 a component failed, 2 configuration or start-up error)."""
    try:
        config = load_config(args.config, overrides_from_args(args))
    except ConfigError as exc:
        print(f"refscope daemon: error: {one_line(exc)}", file=sys.stderr)
        return 2
    if getattr(args, "print_config", False):
        sys.stdout.write(config_to_toml(config))
        return 0
    _setup_logging(config, getattr(args, "verbose", 0))
    from ..serve.malloc import return_freed_memory

    return_freed_memory()  # resident size follows what is in use (serve.max_memory_mb)
    from ..service.daemon import Daemon  # heavy imports (models, ONNX) only when really running

    daemon = Daemon(config)
    try:
        daemon.start()
    except (RefscopeError, OSError, ValueError) as exc:
        print(f"refscope daemon: error: {one_line(exc)}", file=sys.stderr)
        return 2
    for name, endpoint in daemon.endpoints.items():
        if endpoint is not None:
            print(f"{name} {endpoint}")
    if config.ingest.watch is not None:
        print(f"watch {config.ingest.watch}")
    if config.publish.out_dir is not None:
        print(f"out {config.publish.out_dir}")
    print(f"state {config.state_dir}")
    print("ready", flush=True)
    # systemd Type=notify: READY=1, watchdog pings while daemon.check() passes, STOPPING=1 (no-op elsewhere)
    with ServiceNotifications(daemon.check, status=lambda: daemon_status_line(daemon.status())):
        return daemon.run_forever()


def main(argv: list[str] | None = None) -> int:
    """``python -m refscope.daemon.cli.daemon [options]``: the ``daemon`` subcommand on its own."""
    parser = argparse.ArgumentParser(prog="refscope")
    sub = parser.add_subparsers(dest="command")
    add_daemon_parser(sub)
    try:
        args = parser.parse_args(["daemon", *(sys.argv[1:] if argv is None else argv)])
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 2
    return run_daemon(args)


if __name__ == "__main__":
    raise SystemExit(main())
