"""Write deploy/refscope.example.toml: every configuration key with its documentation, from the code itself.

    python deploy/make_example_config.py > deploy/refscope.example.toml      (or: make deploy-config)

The text is :func:`refscope.daemon.config.config_to_toml` of the configuration of a typical microscope PC (the
paths below; everything else the defaults), so the example cannot drift from the code: tests/daemon/test_deploy.py
fails until it is regenerated after a key or its documentation changes.
"""
from __future__ import annotations

import sys

from refscope.daemon.config import config_to_toml, load_config

#: The folders of deploy/refscope.service and deploy/README.md.
PATHS = {
    "ingest.watch": "/data/acquisition",
    "publish.out_dir": "/srv/refscope/out",
    "state_dir": "/var/lib/refscope",
}

HEADER = """\
# Example configuration for a microscope PC: install as /etc/refscope/refscope.toml (deploy/refscope.service).
# Every key is listed with its documentation; commented-out keys are unset and show an example value.
# Generated from the code by `python deploy/make_example_config.py` (make deploy-config): do not edit here.
#
"""


def render() -> str:
    """The example configuration file's text."""
    return HEADER + config_to_toml(load_config(None, PATHS))


if __name__ == "__main__":
    sys.stdout.write(render())
