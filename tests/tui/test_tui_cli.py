"""``refscope tui``: the subcommand's options, and that nothing is logged to the terminal the UI draws on."""
from __future__ import annotations

import logging

from refscope.daemon.cli import build_parser
from refscope.tui import app as app_module


def test_tui_subcommand_options_and_defaults():
    args = build_parser().parse_args(["tui"])
    assert (args.connect, args.stream, args.events, args.log_file) == ("tcp://127.0.0.1:5560", None, None, None)
    args = build_parser().parse_args(["tui", "--connect", "tcp://scope:6000", "--stream", "tcp://scope:6001",
                                      "--log-file", "tui.log"])
    assert (args.connect, args.stream, args.log_file) == ("tcp://scope:6000", "tcp://scope:6001", "tui.log")


def test_logging_goes_to_the_log_file_not_the_terminal_while_the_app_runs(monkeypatch, tmp_path, capsys):
    seen = {}

    def fake_run(self):
        root = logging.getLogger()
        seen["handlers"] = list(root.handlers)
        seen["endpoint"] = self.control_endpoint
        logging.getLogger("refscope.daemon").warning("a warning while the UI runs")

    monkeypatch.setattr(app_module.RefscopeApp, "run", fake_run)
    before = list(logging.getLogger().handlers)
    log = tmp_path / "tui.log"
    assert app_module.run_tui("tcp://127.0.0.1:1", log_file=log) == 0
    assert [type(h) for h in seen["handlers"]] == [logging.FileHandler] and seen["endpoint"] == "tcp://127.0.0.1:1"
    assert "a warning while the UI runs" in log.read_text()
    assert "a warning" not in capsys.readouterr().err
    assert logging.getLogger().handlers == before  # restored afterwards
    app_module.run_tui("tcp://127.0.0.1:1")
    assert [type(h) for h in seen["handlers"]] == [logging.NullHandler]
