"""refscope.tui — the operator's terminal UI (talks to the daemon only through its published protocol)."""
__all__: list[str] = []
