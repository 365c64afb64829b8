"""The deployment material in deploy/ checked against the code it deploys.

* the example configuration is the code's own documented rendering (regenerate it when a key changes), names
  every key of every section with a comment, and loads;
* the systemd unit has the restart / watchdog / user / hardening settings, its folders agree with the example
  configuration, its ExecStart parses with refscope's own argument parser, and ``systemd-analyze verify`` accepts
  it (where systemd-analyze exists);
* the Dockerfiles use the expected bases, a non-root user, a working HEALTHCHECK, copy no data, install extras
  that exist, pin torch as pyproject.toml does, and start the daemon with a configuration that loads.
"""
from __future__ import annotations

import importlib.util
import json
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from dataclasses import fields
from pathlib import Path

import pytest

from refscope.daemon.wire import control
from refscope.daemon.cli import build_parser
from refscope.daemon.config import SECTIONS, DaemonConfig, load_config
from refscope.daemon.cli.daemon import run_daemon

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
EXAMPLE = DEPLOY / "refscope.example.toml"
UNIT = DEPLOY / "refscope.service"
REGENERATE = "python deploy/make_example_config.py > deploy/refscope.example.toml   (or: make deploy-config)"
SOURCES_IN_IMAGE = {"pyproject.toml", "README.md", "daemon", "models", "tui", "deploy/container.toml"}


def _example_module():
    spec = importlib.util.spec_from_file_location("make_example_config", DEPLOY / "make_example_config.py")
    module = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(module)
    return module


def _all_keys() -> list[tuple[str | None, str]]:
    """(table or None for top level, key) for every configuration key the code knows."""
    keys: list[tuple[str | None, str]] = [(None, f.name) for f in fields(DaemonConfig) if f.name not in SECTIONS]
    for section, cls in SECTIONS.items():
        keys += [(section, f.name) for f in fields(cls)]
    return keys


def _tables(text: str) -> dict[str | None, list[str]]:
    """The lines of a TOML text by table (None: before the first table)."""
    tables: dict[str | None, list[str]] = {None: []}
    current = None
    for line in text.splitlines():
        match = re.match(r"^\[([\w.-]+)\]\s*$", line)
        if match:
            current = match.group(1)
            tables[current] = []
        else:
            tables[current].append(line)
    return tables


# ------------------------------------------------------------------------------------ example configuration


def test_example_config_is_the_codes_own_rendering():
    assert EXAMPLE.read_text(encoding="utf-8") == _example_module().render(), (
        f"deploy/refscope.example.toml is out of date with daemon/config/; regenerate it: {REGENERATE}")


def test_example_config_names_and_documents_every_key():
    tables = _tables(EXAMPLE.read_text(encoding="utf-8"))
    missing, undocumented = [], []
    for table, key in _all_keys():
        lines = tables.get(table, [])
        where = next((i for i, line in enumerate(lines) if re.match(rf"^(# )?{re.escape(key)} =", line)), None)
        name = f"{table}.{key}" if table else key
        if where is None:
            missing.append(name)
        elif where == 0 or not lines[where - 1].startswith("# ") or re.match(r"^# \w+ =", lines[where - 1]):
            undocumented.append(name)
    assert not missing, f"keys missing from deploy/refscope.example.toml: {missing}; regenerate it: {REGENERATE}"
    assert not undocumented, f"keys without a comment above them: {undocumented}"


def test_example_config_loads_as_the_microscope_pc_configuration():
    config = load_config(EXAMPLE)
    paths = _example_module().PATHS
    assert config == load_config(None, paths)
    assert str(config.ingest.watch) == paths["ingest.watch"] == "/data/acquisition"
    assert str(config.publish.out_dir) == paths["publish.out_dir"]
    assert str(config.state_dir) == paths["state_dir"]
    for endpoint in (config.control.endpoint, config.control.events_endpoint, config.publish.pub_endpoint):
        assert endpoint.startswith("tcp://127.0.0.1:"), endpoint


def test_example_config_script_prints_the_file():
    result = subprocess.run([sys.executable, str(DEPLOY / "make_example_config.py")], capture_output=True, text=True,
                            timeout=120, check=True)
    assert result.stdout == EXAMPLE.read_text(encoding="utf-8")


# -------------------------------------------------------------------------------------------- systemd unit


def parse_unit(text: str) -> dict[str, dict[str, list[str]]]:
    """A systemd unit file as {section: {key: [values in order]}} (keys may repeat; comments dropped)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        assert current is not None, f"setting outside a section: {raw!r}"
        assert "=" in line and not line.endswith("\\"), f"not a plain key=value line: {raw!r}"
        key, _, value = line.partition("=")
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


@pytest.fixture(scope="module")
def unit() -> dict[str, dict[str, list[str]]]:
    return parse_unit(UNIT.read_text(encoding="utf-8"))


def _one(unit, section: str, key: str) -> str:
    values = unit[section].get(key)
    assert values, f"[{section}] {key}= missing from deploy/refscope.service"
    return values[-1]


def test_unit_restarts_on_failure_with_notify_and_watchdog(unit):
    service = unit["Service"]
    assert _one(unit, "Service", "Type") == "notify" and _one(unit, "Service", "NotifyAccess") == "main"
    assert _one(unit, "Service", "Restart") == "on-failure"
    assert float(_one(unit, "Service", "RestartSec")) > 0
    assert 2 <= int(_one(unit, "Service", "WatchdogSec")) <= 300
    assert "2" in _one(unit, "Service", "RestartPreventExitStatus").split()  # configuration errors do not loop
    assert int(_one(unit, "Service", "TimeoutStopSec")) >= 60  # drain + output flush + learner step
    assert _one(unit, "Install", "WantedBy") == "multi-user.target"
    assert any(v.startswith("OMP_NUM_THREADS=") for v in service["Environment"])


def test_unit_runs_as_a_dedicated_unprivileged_user_with_a_read_only_system(unit):
    assert _one(unit, "Service", "User") == _one(unit, "Service", "Group") == "refscope"
    sysusers = (DEPLOY / "refscope-sysusers.conf").read_text()
    assert re.search(r"^u refscope ", sysusers, re.M)
    for key, value in {"ProtectSystem": "strict", "ProtectHome": "yes", "PrivateTmp": "yes", "PrivateDevices": "yes",
                       "NoNewPrivileges": "yes", "RestrictSUIDSGID": "yes", "ProtectKernelTunables": "yes",
                       "ProtectControlGroups": "yes", "LockPersonality": "yes"}.items():
        assert _one(unit, "Service", key) == value, key
    assert _one(unit, "Service", "CapabilityBoundingSet") == ""  # no capabilities at all
    assert unit["Service"]["SystemCallFilter"][0] == "@system-service"


def test_unit_folders_match_the_example_configuration(unit):
    config = load_config(EXAMPLE)
    # acquisition folder read-only, output folder writable, state folder managed by systemd
    assert str(config.ingest.watch) in _one(unit, "Service", "ReadOnlyPaths").split()
    assert str(config.publish.out_dir) in _one(unit, "Service", "ReadWritePaths").split()
    assert str(config.ingest.watch) not in _one(unit, "Service", "ReadWritePaths").split()
    assert Path("/var/lib") / _one(unit, "Service", "StateDirectory") == config.state_dir
    assert str(config.ingest.watch) in _one(unit, "Unit", "RequiresMountsFor").split()
    tmpfiles = (DEPLOY / "refscope-tmpfiles.conf").read_text()
    assert re.search(rf"^d {re.escape(str(config.publish.out_dir))}\s+\d+ refscope refscope", tmpfiles, re.M)


def test_unit_execstart_parses_with_refscopes_own_parser(unit):
    argv = shlex.split(_one(unit, "Service", "ExecStart"))
    assert Path(argv[0]).name == "refscope" and Path(argv[0]).is_absolute()
    args = build_parser().parse_args(argv[1:])
    assert args.command == "daemon" and args.handler is run_daemon
    assert args.config == "/etc/refscope/refscope.toml"
    assert _one(unit, "Service", "ConfigurationDirectory") == "refscope"


def _systemd_copy(tmp_path: Path, with_gpu: bool) -> Path:
    """The unit (and the GPU drop-in) in tmp_path with ExecStart pointing at this environment's refscope, which
    systemd-analyze verify requires to exist."""
    refscope = Path(sys.executable).parent / "refscope"
    if not refscope.exists():
        pytest.skip("the refscope console script is not installed in this environment")
    text = UNIT.read_text().replace("/opt/refscope/venv/bin/refscope", str(refscope))
    path = tmp_path / "refscope.service"
    path.write_text(text)
    if with_gpu:
        (tmp_path / "refscope.service.d").mkdir()
        shutil.copy(DEPLOY / "refscope.service.d" / "gpu.conf", tmp_path / "refscope.service.d" / "gpu.conf")
    return path


@pytest.mark.parametrize("with_gpu", [False, True], ids=["cpu", "gpu-drop-in"])
def test_systemd_analyze_verify_accepts_the_unit(tmp_path, with_gpu):
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed")
    path = _systemd_copy(tmp_path, with_gpu)
    result = subprocess.run(["systemd-analyze", "verify", str(path)], capture_output=True, text=True, timeout=120)
    problems = [line for line in (result.stdout + result.stderr).splitlines() if "refscope" in line]
    assert result.returncode == 0 and not problems, result.stdout + result.stderr


def test_systemd_analyze_security_rates_the_unit_ok(tmp_path):
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed")
    path = _systemd_copy(tmp_path, with_gpu=False)
    result = subprocess.run(["systemd-analyze", "security", "--offline=true", "--no-pager", str(path)],
                            capture_output=True, text=True, timeout=120)
    match = re.search(r"Overall exposure level for refscope.service: ([\d.]+)", result.stdout)
    if result.returncode != 0 and match is None:
        pytest.skip(f"systemd-analyze security --offline unsupported here: {result.stderr.strip()[:200]}")
    assert match is not None, result.stdout[-2000:]
    assert float(match.group(1)) <= 2.5, result.stdout  # systemd's scale: 0 safe .. 10 exposed; <= 3.9 "OK"


# ---------------------------------------------------------------------------------------------- containers


def _pyproject() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def _torch_requirement() -> str:
    deps = _pyproject()["project"]["dependencies"]
    return next(d for d in deps if re.match(r"^torch\b", d)).replace(" ", "")


def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        pending = f"{pending} {line[:-1] if line.endswith(chr(92)) else line}".strip()
        if not line.endswith("\\"):
            word, _, rest = pending.partition(" ")
            out.append((word.upper(), rest.strip()))
            pending = ""
    return out


def _args(instructions: list[tuple[str, str]]) -> dict[str, str]:
    args = {}
    for word, rest in instructions:
        if word == "ARG" and "=" in rest:
            name, _, value = rest.partition("=")
            args[name] = value.strip('"')
    return args


def _exec_form(value: str) -> list[str]:
    parsed = json.loads(value)
    assert isinstance(parsed, list) and all(isinstance(p, str) for p in parsed), value
    return parsed


@pytest.fixture(scope="module", params=["cpu", "cuda"])
def dockerfile(request) -> tuple[str, list[tuple[str, str]]]:
    return request.param, dockerfile_instructions((DEPLOY / f"Dockerfile.{request.param}").read_text())


def test_dockerfile_base_image_and_extra(dockerfile):
    variant, instructions = dockerfile
    args = _args(instructions)
    froms = [rest for word, rest in instructions if word == "FROM"]
    assert len(froms) == 1
    base = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], froms[0])
    extra = {"cpu": "cpu", "cuda": "gpu"}[variant]
    if variant == "cpu":
        assert re.match(r"^python:3\.1[1-9]-slim", base), base
    else:
        assert re.match(r"^nvidia/cuda:\d+\.\d+(\.\d+)?-cudnn-runtime-ubuntu", base), base
    installs = " ".join(rest for word, rest in instructions if word == "RUN" and "pip install" in rest)
    extras = set(re.findall(r"/tmp/refscope\[(\w+)\]", installs))
    assert extras == {extra} and extra in _pyproject()["project"]["optional-dependencies"]
    assert args["TORCH_SPEC"].replace(" ", "") == _torch_requirement(), "keep TORCH_SPEC equal to pyproject.toml's torch"
    assert "download.pytorch.org/whl/" in args["TORCH_INDEX_URL"]


def test_dockerfile_runs_as_non_root_and_copies_no_data(dockerfile):
    _, instructions = dockerfile
    users = [rest for word, rest in instructions if word == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0")
    for word, rest in instructions:
        if word in ("COPY", "ADD"):
            assert word == "COPY" and "--from" not in rest
            *sources, _dest = shlex.split(rest)
            assert set(sources) <= SOURCES_IN_IMAGE, f"{word} {rest}: only the package sources may go in the image"
    ignore = [line for line in (REPO / ".dockerignore").read_text().splitlines() if line and not line.startswith("#")]
    assert ignore[0] == "**"  # everything out of the build context ...
    assert {line[1:].rstrip("/") for line in ignore if line.startswith("!")} == SOURCES_IN_IMAGE  # ... but these


def test_dockerfile_starts_the_daemon_with_a_loading_configuration(dockerfile):
    _, instructions = dockerfile
    entry = _exec_form(next(rest for word, rest in instructions if word == "ENTRYPOINT"))
    cmd = _exec_form(next(rest for word, rest in instructions if word == "CMD"))
    assert entry[0] == "refscope"
    args = build_parser().parse_args(entry[1:] + cmd)
    assert args.command == "daemon"
    copied = {shlex.split(rest)[-1]: shlex.split(rest)[0] for word, rest in instructions if word == "COPY"}
    assert copied[args.config] == "deploy/container.toml"
    config = load_config(DEPLOY / "container.toml")
    volumes = set(_exec_form(next(rest for word, rest in instructions if word == "VOLUME")))
    assert {str(config.ingest.watch), str(config.state_dir), str(config.publish.out_dir)} == volumes
    exposed = {int(p) for word, rest in instructions if word == "EXPOSE" for p in rest.split()}
    ports = {int(e.rsplit(":", 1)[1]) for e in (config.control.endpoint, config.control.events_endpoint,
                                                 config.publish.pub_endpoint)}
    assert ports <= exposed


def _healthcheck(instructions) -> list[str]:
    rest = next(rest for word, rest in instructions if word == "HEALTHCHECK")
    options, _, command = rest.partition("CMD ")
    assert "--interval=" in options and "--start-period=" in options
    return _exec_form(command)


def test_healthcheck_pings_the_running_daemon(dockerfile, tmp_path):
    """The HEALTHCHECK command itself, against a real daemon (its state folder in place of the volume)."""
    _, instructions = dockerfile
    command = _healthcheck(instructions)
    assert command[:2] == ["python", "-c"] and hasattr(control, "wait_for_daemon")
    state_json = str(load_config(DEPLOY / "container.toml").state_dir / "daemon.json")
    assert state_json in command[2]
    from refscope.daemon.service.daemon import Daemon

    state = tmp_path / "state"
    code = command[2].replace(state_json, str(state / "daemon.json"))
    watch = tmp_path / "in"
    watch.mkdir()
    config = load_config(None, {"ingest.watch": str(watch), "publish.out_dir": str(tmp_path / "out"),
                                "state_dir": str(state), "control.endpoint": "tcp://127.0.0.1:*",
                                "control.events_endpoint": "tcp://127.0.0.1:*", "publish.pub_endpoint": "tcp://127.0.0.1:*"})
    with Daemon(config):
        healthy = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert healthy.returncode == 0, healthy.stderr
    stopped = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert stopped.returncode != 0  # daemon.json removed at a clean stop: unhealthy


def test_compose_publishes_on_loopback_and_mounts_acquisition_read_only():
    yaml = pytest.importorskip("yaml")
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    assert set(compose["services"]) == {"refscope-cpu", "refscope-cuda"}
    for name, service in compose["services"].items():
        assert service["build"]["dockerfile"] == f"deploy/Dockerfile.{name.split('-')[1]}"
        assert all(port.startswith("127.0.0.1:") for port in service["ports"]), service["ports"]
        assert "/data/acquisition:/data/acquisition:ro" in service["volumes"]
        assert service["restart"] == "unless-stopped" and service["cap_drop"] == ["ALL"]


def test_every_deploy_file_is_described_in_the_readmes():
    readme = (DEPLOY / "README.md").read_text()
    for path in sorted(DEPLOY.rglob("*")):
        if path.is_file() and path.name != "README.md" and "__pycache__" not in path.parts:
            assert path.name in readme, f"deploy/README.md does not mention {path.relative_to(DEPLOY)}"
    top = (REPO / "README.md").read_text()
    assert "## Installing on a microscope PC" in top and "deploy/README.md" in top


def test_every_package_folder_is_installed():
    """A fresh (non-editable) install ships exactly the folders that are packages: every folder of the code that
    holds an ``__init__.py`` is listed in ``[tool.setuptools] packages`` under its installed name, and nothing
    listed is missing (a room added without its line would be absent from a wheel and fail only there)."""
    project = _pyproject()
    listed = set(project["tool"]["setuptools"]["packages"])
    roots = {name: REPO / folder for name, folder in project["tool"]["setuptools"]["package-dir"].items()}
    found = set()
    for name, root in roots.items():
        for init in root.rglob("__init__.py"):
            if any(part.startswith(".") or part == "__pycache__" for part in init.relative_to(root).parts):
                continue
            parts = init.parent.relative_to(root).parts
            found.add(".".join((name, *parts)) if parts else name)
    assert listed == found, (f"missing from pyproject packages: {sorted(found - listed)}; "
                             f"listed but not a package: {sorted(listed - found)}")
