"""Progress displays: shown on a terminal, silent in pipes and with --quiet (issue 15, item 4)."""
from __future__ import annotations

import io

from refscope.daemon.offline.progress import progress


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_progress_bar_is_drawn_on_a_terminal_and_nowhere_else() -> None:
    shown = Terminal()
    with progress("enhance: 3 frame(s)", 3, stream=shown) as steps:
        for _ in range(3):
            steps.advance()
        steps.say("enhance: done")
    assert "enhance" in shown.getvalue()
    for stream, quiet in ((io.StringIO(), False), (Terminal(), True)):  # a pipe; --quiet
        with progress("fit", None, stream=stream, quiet=quiet) as steps:
            steps.advance()
            steps.say("fit: building the library")
        assert stream.getvalue() == ""


def test_commands_print_no_progress_into_a_pipe(tmp_path, capsys) -> None:
    from refscope.daemon.cli import main

    assert main(["demo", "--offline", "--small", "--seed", "2", "--workdir", str(tmp_path)]) == 0
    err = capsys.readouterr().err
    assert "━" not in err and "\x1b[" not in err  # no bar, no terminal escapes in captured (non-tty) output
