"""The daemon's ``status`` (:mod:`refscope.daemon.service.status`): built typed, sent as JSON, read back the same."""
from __future__ import annotations

import json
import time
from typing import Any

import numpy as np

from refscope.daemon.config import load_config
from refscope.daemon.frames import Frame
from refscope.daemon.service.daemon import Daemon
from refscope.daemon.state.model_store import save_model
from refscope.daemon.wire.control import ControlClient, encode_reply
from refscope.daemon.wire.status import DaemonStatus
from refscope.models.library import LibraryConfig
from refscope.models.pipeline import FitConfig, fit
from refscope.models.synthetic import make_pair
from tests.daemon.queue_source import QueueSource
from tests.daemon.waiting import wait_for

SHAPE = (48, 64)


def _shape(document: Any) -> Any:
    """The keys of a JSON document, nested (values left out: they move while the daemon runs)."""
    if isinstance(document, dict):
        return {key: _shape(value) for key, value in document.items() if key != "history"}
    return type(document).__name__ if document is not None else None


def test_status_round_trips_through_the_control_endpoint(tmp_path):
    pair = make_pair(rng=np.random.default_rng(4), lr_shape=SHAPE, factor=2.0)
    model = fit(pair.lr, [(pair.hr, 2.0)], config=FitConfig(scale=2, library=LibraryConfig(size=200)))
    save_model(tmp_path / "state", model, sources=["synthetic"])
    config = load_config(None, {"ingest.zmq_endpoint": "tcp://127.0.0.1:*", "state_dir": str(tmp_path / "state"),
                                "control.endpoint": "tcp://127.0.0.1:*", "control.events_endpoint": "tcp://127.0.0.1:*",
                                "publish.pub_endpoint": "tcp://127.0.0.1:*", "publish.out_dir": str(tmp_path / "out"),
                                "trainer.enabled": "false"})
    source = QueueSource()
    with Daemon(config, sources=[source], use_onnx=False) as daemon, \
            ControlClient(daemon.endpoints["control"], timeout_s=30) as client:
        for seq in range(3):
            source.items.put(Frame(pair.lr.astype(np.float32), 10.0, "lr", f"mem:{seq}", seq, time.time()))
        wait_for(lambda: daemon.status().frames.written == 3 and daemon.status().quality.frames_measured == 3, 60,
                 "3 frames written and measured")
        status = daemon.status()
        reply = client.call("status")["status"]
    # daemon -> JSON -> DaemonStatus: the same values
    assert DaemonStatus.from_dict(json.loads(encode_reply(status.to_dict()))) == status
    # what the control endpoint sent reads back whole: no key the typed status does not know, none it invents
    assert DaemonStatus.from_dict(reply).to_dict() == reply
    assert _shape(reply) == _shape(status.to_dict())
    read = DaemonStatus.from_dict(reply)
    assert read.frames.in_ == reply["frames"]["in"] == 3 and read.frames.written == 3
    assert read.model.version == status.model.version == 1 and read.model_version == 1
    assert read.quality is not None and set(read.quality.signals) == set(reply["quality"]["signals"])
    assert read.learner is not None and read.learner.model_version == 1
    assert read.trainer.enabled is False and reply["trainer"] == {"enabled": False}
    assert read.publish.folder is not None and read.publish.folder.written == 3
    assert read.endpoints["control"] == daemon.endpoints["control"] and read.out_dir == str(tmp_path / "out")
