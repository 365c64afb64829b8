"""Daemon configuration: TOML + dotted overrides, every error names its key, paths made absolute, round trip."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from refscope.daemon.config import (
    STATE_DIR_NAME,
    ConfigError,
    ControlConfig,
    DaemonConfig,
    IngestConfig,
    ModelConfig,
    PublishConfig,
    ServeConfig,
    config_to_toml,
    default_state_dir,
    load_config,
)
from refscope.daemon.ingest.folder import FolderSourceConfig
from refscope.daemon.ingest.feed import ZmqSourceConfig

pytestmark = pytest.mark.timeout(30)


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_overrides_alone_give_a_valid_config(tmp_path: Path) -> None:
    cfg = load_config(None, {"ingest.watch": str(tmp_path / "in"), "publish.out_dir": tmp_path / "out"})
    assert isinstance(cfg, DaemonConfig)
    assert cfg.ingest.watch == tmp_path / "in"
    assert cfg.publish.out_dir == tmp_path / "out"
    assert cfg.state_dir == tmp_path / "out" / STATE_DIR_NAME
    assert cfg.model == ModelConfig() and cfg.serve == ServeConfig() and cfg.control == ControlConfig()
    assert cfg.publish.pub_endpoint.startswith("tcp://127.0.0.1:")
    assert cfg.control.endpoint.startswith("tcp://127.0.0.1:")
    assert cfg.control.events_endpoint.startswith("tcp://127.0.0.1:")
    assert cfg.log_level == "INFO"


def test_none_overrides_are_ignored_and_strings_are_parsed(tmp_path: Path) -> None:
    cfg = load_config(None, {
        "ingest.watch": str(tmp_path / "in"), "publish.out_dir": None, "model.scale": "3",
        "ingest.use_polling": "yes", "model.sigma_n": "0.5", "serve.providers": "CUDAExecutionProvider, CPUExecutionProvider",
        "model.patch_size": "none", "log_level": "debug",
    })
    assert cfg.publish.out_dir is None
    assert cfg.model.scale == 3 and cfg.model.sigma_n == 0.5 and cfg.model.patch_size is None
    assert cfg.ingest.use_polling is True
    assert cfg.serve.providers == ("CUDAExecutionProvider", "CPUExecutionProvider")
    assert cfg.log_level == "DEBUG"
    assert cfg.state_dir == default_state_dir(None)


def test_toml_file_with_overrides_winning(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    conf_dir = tmp_path / "etc"
    conf_dir.mkdir()
    path = _write(conf_dir / "refscope.toml", """
state_dir = "state"
log_level = "WARNING"

[ingest]
watch = "../incoming"
zmq_endpoint = "tcp://127.0.0.1:5555"
zmq_pattern = "sub"
pixel_size_nm = 5
hr_filename_pattern = "*_HR.tif"

[model]
scale = 4
method = "paired-faithful"
library_size = 2000
patch_size = 9

[serve]
providers = ["CPUExecutionProvider"]
intra_op_threads = 2
tile = 512
halo = 16

[publish]
out_dir = "/abs/out"
pub_hwm = 2
write_confidence = true
""")
    monkeypatch.chdir(tmp_path)
    cfg = load_config(path, {"model.scale": 3, "publish.out_dir": "rel_out"})
    assert cfg.state_dir == conf_dir / "state"  # relative to the file's folder
    assert cfg.ingest.watch == Path(os.path.abspath(conf_dir / ".." / "incoming"))
    assert cfg.publish.out_dir == tmp_path / "rel_out"  # override: relative to the working directory
    assert cfg.ingest.zmq_pattern == "sub" and cfg.ingest.pixel_size_nm == 5.0
    assert isinstance(cfg.ingest.pixel_size_nm, float)
    assert cfg.model == ModelConfig(scale=3, method="paired-faithful", library_size=2000, patch_size=9)
    assert cfg.serve == ServeConfig(providers=("CPUExecutionProvider",), intra_op_threads=2, tile=512, halo=16)
    assert cfg.publish.pub_hwm == 2 and cfg.publish.write_confidence is True
    assert cfg.log_level == "WARNING"
    assert cfg.ingest.role_for("/x/a_hr.TIF") == "hr" and cfg.ingest.role_for("b.tif") == "auto"


def test_zmq_only_ingest_is_enough(tmp_path: Path) -> None:
    cfg = load_config(None, {"ingest.zmq_endpoint": "tcp://127.0.0.1:5555", "state_dir": tmp_path / "s"})
    assert cfg.ingest.watch is None and cfg.publish.out_dir is None
    assert cfg.ingest.zmq_source_config() == ZmqSourceConfig(endpoint="tcp://127.0.0.1:5555", pattern="pull")
    with pytest.raises(ConfigError, match="ingest.watch"):
        cfg.ingest.folder_source_config()


def test_folder_source_config(tmp_path: Path) -> None:
    ingest = IngestConfig(watch=tmp_path, use_polling=True, pixel_size_nm=4.0)
    source = ingest.folder_source_config(include_existing=True)
    assert isinstance(source, FolderSourceConfig)
    assert source.path == tmp_path and source.use_polling and source.pixel_size_nm == 4.0 and source.include_existing


@pytest.mark.parametrize(
    ("overrides", "key", "fragment"),
    [
        ({"model.scal": 3}, "model.scal", "allowed: scale, method, library_size, patch_size, sigma_n"),
        ({"bogus": 1}, "bogus", "allowed: state_dir, log_level"),
        ({"nosuch.key": 1}, "nosuch.key", "allowed: ingest.*"),
        ({"model.method": "fancy"}, "model.method", "'best', 'paired', 'net', 'paired-faithful', 'original', 'bicubic'"),
        ({"model.scale": 9}, "model.scale", "from 2 to 8"),
        ({"model.scale": 2.5}, "model.scale", "must be an integer"),
        ({"model.scale": True}, "model.scale", "must be an integer"),
        ({"model.scale": "two"}, "model.scale", "must be an integer"),
        ({"model.patch_size": 8}, "model.patch_size", "odd integer >= 3"),
        ({"model.library_size": 5}, "model.library_size", ">= 10"),
        ({"model.sigma_n": -1.0}, "model.sigma_n", "from 0.01 to 100"),
        ({"ingest.zmq_pattern": "push"}, "ingest.zmq_pattern", "'pull', 'sub'"),
        ({"ingest.use_polling": "maybe"}, "ingest.use_polling", "true or false"),
        ({"ingest.pixel_size_nm": 0}, "ingest.pixel_size_nm", "positive"),
        ({"ingest.hr_filename_pattern": ""}, "ingest.hr_filename_pattern", "glob"),
        ({"serve.halo": 600}, "serve.halo", "less than tile / 2"),
        ({"serve.tile": 8}, "serve.tile", ">= 64"),
        ({"serve.intra_op_threads": -1}, "serve.intra_op_threads", ">= 0"),
        ({"publish.pub_hwm": 0}, "publish.pub_hwm", ">= 1"),
        ({"publish.output_queue_limit": 0}, "publish.output_queue_limit", ">= 1"),
        ({"publish.pub_endpoint": "localhost:5561"}, "publish.pub_endpoint", "ZMQ endpoint"),
        ({"control.events_endpoint": "tcp://127.0.0.1:5560"}, "control.events_endpoint", "same address as control.endpoint"),
        ({"log_level": "LOUD"}, "log_level", "'DEBUG', 'INFO', 'WARNING', 'ERROR'"),
    ],
)
def test_errors_name_the_key(tmp_path: Path, overrides: dict[str, object], key: str, fragment: str) -> None:
    base: dict[str, object] = {"ingest.watch": tmp_path / "in", "publish.out_dir": tmp_path / "out"}
    with pytest.raises(ConfigError) as info:
        load_config(None, {**base, **overrides})
    assert info.value.key == key
    assert key in str(info.value)
    assert fragment in str(info.value)
    assert "command-line overrides" in str(info.value)


def test_unknown_key_in_file_names_file_and_allowed_keys(tmp_path: Path) -> None:
    path = _write(tmp_path / "refscope.toml", '[ingest]\nwatch = "/in"\n[model]\nscal = 3\n')
    with pytest.raises(ConfigError) as info:
        load_config(path, {})
    message = str(info.value)
    assert f"unknown key 'model.scal' in {path}; allowed: scale, method" in message
    assert "did you mean 'scale'" in message


def test_file_type_error_names_key_and_file(tmp_path: Path) -> None:
    path = _write(tmp_path / "refscope.toml", '[ingest]\nwatch = "/in"\n[publish]\npub_hwm = "four"\n')
    with pytest.raises(ConfigError, match=r"publish\.pub_hwm must be an integer, got 'four' \(in .*refscope\.toml\)"):
        load_config(path, {})
    _write(path, 'model = 3\n[ingest]\nwatch = "/in"\n')
    with pytest.raises(ConfigError, match="'model' in .* must be a table"):
        load_config(path, {})


def test_bad_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="configuration file not found"):
        load_config(tmp_path / "missing.toml", {})
    bad = _write(tmp_path / "bad.toml", "[ingest\nwatch = 1\n")
    with pytest.raises(ConfigError, match=r"bad\.toml: not valid TOML"):
        load_config(bad, {})


def test_an_ingest_source_is_required(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no ingest source") as info:
        load_config(None, {"publish.out_dir": tmp_path})
    assert info.value.key == "ingest.watch"


@pytest.mark.parametrize("inside", [".", "out", "a/b"])
def test_out_dir_inside_watch_is_refused(tmp_path: Path, inside: str) -> None:
    watch = tmp_path / "in"
    with pytest.raises(ConfigError, match="inside the watched folder") as info:
        load_config(None, {"ingest.watch": watch, "publish.out_dir": watch / inside})
    assert info.value.key == "publish.out_dir"


def test_out_dir_inside_watch_through_a_symlink_is_refused(tmp_path: Path) -> None:
    watch = tmp_path / "in"
    watch.mkdir()
    (tmp_path / "link").symlink_to(watch)
    with pytest.raises(ConfigError, match="inside the watched folder"):
        load_config(None, {"ingest.watch": watch, "publish.out_dir": tmp_path / "link" / "out"})


def test_state_dir_inside_watch_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="inside the watched folder") as info:
        load_config(None, {"ingest.watch": tmp_path, "publish.out_dir": tmp_path.parent / "elsewhere",
                           "state_dir": tmp_path / ".state"})
    assert info.value.key == "state_dir"


def test_sibling_folders_are_fine(tmp_path: Path) -> None:
    cfg = load_config(None, {"ingest.watch": tmp_path / "in", "publish.out_dir": tmp_path / "in2"})
    assert cfg.publish.out_dir == tmp_path / "in2"


def test_out_dir_that_is_a_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "out").write_text("x")
    with pytest.raises(ConfigError, match="not a folder"):
        load_config(None, {"ingest.watch": tmp_path / "in", "publish.out_dir": tmp_path / "out"})


def test_direct_construction_validates_and_normalises(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="model.method"):
        ModelConfig(method="nope")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="no ingest source"):
        IngestConfig()
    publish = PublishConfig(out_dir="relative")  # type: ignore[arg-type]
    assert publish.out_dir == Path.cwd() / "relative"
    serve = ServeConfig(providers=["CPUExecutionProvider"])  # type: ignore[arg-type]
    assert serve.providers == ("CPUExecutionProvider",)


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"ingest.zmq_endpoint": "tcp://127.0.0.1:5599", "ingest.pixel_size_nm": 3.25, "ingest.hr_filename_pattern": "*_HR*",
         "ingest.lr_filename_pattern": "*_LR*", "model.patch_size": 11, "model.sigma_n": 0.75, "model.method": "original",
         "serve.providers": ["CUDAExecutionProvider", "CPUExecutionProvider"], "publish.write_confidence": True,
         "log_level": "ERROR", "state_dir": "/var/lib/refscope \"quoted\" ü"},
    ],
)
def test_config_to_toml_round_trip(tmp_path: Path, overrides: dict[str, object]) -> None:
    cfg = load_config(None, {"ingest.watch": tmp_path / "in", "publish.out_dir": tmp_path / "out", **overrides})
    text = config_to_toml(cfg)
    path = _write(tmp_path / "written.toml", text)
    assert load_config(path, {}) == cfg
    lines = text.splitlines()
    for number, line in enumerate(lines):
        is_key = line and not line.startswith(("#", "[")) and "=" in line
        is_unset_key = line.startswith("# ") and " = " in line and not line.startswith("# ---") and number > 0 \
            and lines[number - 1].startswith("#") and not lines[number - 1].startswith("# ---") and \
            " = " not in lines[number - 1]
        if is_key or is_unset_key:
            assert lines[number - 1].startswith("# "), f"no comment above {line!r}"
    for section in ("[ingest]", "[model]", "[serve]", "[publish]", "[control]"):
        assert section in lines
