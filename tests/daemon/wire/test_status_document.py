"""The typed ``status`` (:mod:`refscope.daemon.wire.status`): JSON in and out, and what an older daemon leaves out."""
from __future__ import annotations

import json

from refscope.daemon.wire.control import encode_reply
from refscope.daemon.wire.status import (DaemonStatus, DriftSignal, HookStatus, IngestSourceStatus, QualityStatus,
                                         ReferenceRequests, TrainerStatus, TrainingRound)


def test_an_older_daemon_status_reads_with_defaults_and_unknown_keys_are_ignored():
    status = DaemonStatus.from_dict({"paused": True, "frames": {"in": 4, "out": 3}, "learner": None,
                                     "trainer": {"enabled": False}, "something_new": {"x": 1}})
    assert status.paused and status.frames.in_ == 4 and status.frames.out == 3 and status.frames.written == 0
    assert status.learner is None and status.quality is None and status.trainer == TrainerStatus(enabled=False)
    assert status.latency.p50_s is None and status.model.providers == () and status.ingest == {}
    assert "something_new" not in status.to_dict() and status.to_dict()["frames"]["in"] == 4


def test_variant_parts_write_only_their_keys():
    assert TrainerStatus(enabled=False).to_dict() == {"enabled": False}
    assert IngestSourceStatus(error="closed").to_dict() == {"error": "closed"}
    assert "error" not in IngestSourceStatus(received=2, recent=("a: ingested",)).to_dict()
    requests = ReferenceRequests(made=1).to_dict()
    assert "hook" not in requests  # only with a reference hook
    with_hook = ReferenceRequests(made=1, hook=HookStatus(name="log", delivered=1)).to_dict()
    assert with_hook["hook"] == {"name": "log", "delivered": 1, "failed": 0, "dropped": 0, "last_error": None}
    assert ReferenceRequests.from_dict(with_hook).hook == HookStatus(name="log", delivered=1)


def test_a_status_survives_the_wire():
    quality = QualityStatus(enabled=True, signals={"coverage": DriftSignal(value=0.4, on=0.5, history=(0.6, 0.4))},
                            history=({"coverage": 0.4},))
    status = DaemonStatus(running=True, quality=quality, ingest={"folder": IngestSourceStatus(received=3)},
                          endpoints={"control": "tcp://127.0.0.1:5560", "zmq_ingest": None})
    document = json.loads(encode_reply(status.to_dict()))
    assert DaemonStatus.from_dict(document) == status
    assert document["quality"]["signals"]["coverage"]["history"] == [0.6, 0.4]


def test_training_round_results_keep_the_keys_of_how_the_round_ended():
    no_data = TrainingRound(round=1, network="edsr", strategy="real-pairs", champion_kind="bicubic", net_version=1,
                            status="no_data", reason="no learned reference pairs yet", round_s=0.0)
    assert list(no_data.to_dict()) == ["round", "network", "strategy", "champion_kind", "net_version", "status",
                                       "reason", "round_s"]
    validated = TrainingRound(round=2, network="edsr", strategy="real-pairs", champion_kind="bicubic", net_version=1,
                              status="kept", reason="not better", candidate={"d_psnr_db": -0.1}, champion=None,
                              warm_start=None, steps=(10, None), train_s=1.0, round_s=1.5, pairs=1, held_out=3,
                              sources=(["lr.tif", "hr.tif"],), checkpointed=True)
    document = validated.to_dict()
    assert document["champion"] is None and document["warm_start"] is None and "spec" not in document
    assert json.loads(json.dumps(document))["sources"] == [["lr.tif", "hr.tif"]]
    assert TrainingRound.from_dict(json.loads(json.dumps(document))) == validated
    assert TrainingRound(status="failed", reason="round_failed: boom").to_dict() == {
        "status": "failed", "reason": "round_failed: boom"}
