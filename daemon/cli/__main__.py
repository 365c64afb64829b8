"""``python -m refscope.daemon.cli``: the same as the ``refscope`` command."""
import sys

from .commands import main

sys.exit(main())
