"""examples/deploy: the systemd unit and the Kubernetes manifest stay consistent with each
other's shutdown timing and with the command line they run."""

from __future__ import annotations

import configparser
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from asyncjobs import Worker
from asyncjobs._cli.loader import load

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "examples" / "deploy"
HANDBACK_S = 10  # what the worker may spend after the grace period: cancel, settle, hand back
TARGET = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")


def unit() -> configparser.SectionProxy:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]  # keys are case-sensitive
    parser.read(DEPLOY / "asyncjobs-worker.service", encoding="utf-8")
    return parser["Service"]


def manifests() -> list[dict[str, Any]]:
    with (DEPLOY / "kubernetes.yaml").open(encoding="utf-8") as f:
        return [doc for doc in yaml.safe_load_all(f) if doc]


def deployment() -> dict[str, Any]:
    (found,) = [d for d in manifests()
                if d["kind"] == "Deployment" and d["metadata"]["name"] == "asyncjobs-worker"]
    return found


def container() -> dict[str, Any]:
    found: dict[str, Any]
    (found,) = deployment()["spec"]["template"]["spec"]["containers"]
    return found


def grace_of(argv: list[str]) -> float:
    """The worker's --grace; the manifests must set it rather than rely on the default."""
    assert "--grace" in argv, argv
    return float(argv[argv.index("--grace") + 1])


def seconds(value: str) -> float:
    """A systemd time span, in the forms the unit uses: '45', '45s', '1min'."""
    match = re.fullmatch(r"(\d+)\s*(s|sec|min)?", value.strip())
    assert match, f"unexpected time span {value!r}"
    return float(match[1]) * (60 if match[2] == "min" else 1)


def unit_argv() -> list[str]:
    return shlex.split(unit()["ExecStart"])


def test_systemd_unit_runs_a_worker_with_a_grace_period() -> None:
    argv = unit_argv()
    assert Path(argv[0]).name == "asyncjobs" and Path(argv[0]).is_absolute()  # the venv's
    assert argv[1] == "worker"
    assert TARGET.match(argv[2]), argv[2]
    assert grace_of(argv) > 0


def test_systemd_unit_stops_gracefully_before_the_sigkill() -> None:
    service = unit()
    assert service["Type"] == "simple"
    assert service["KillSignal"] == "SIGTERM"
    assert service["KillMode"] == "mixed"
    assert seconds(service["TimeoutStopSec"]) > grace_of(unit_argv()) + HANDBACK_S
    assert service["Restart"] == "always"
    assert service["User"] not in ("", "root")
    assert service["EnvironmentFile"].lstrip("-") == "/etc/asyncjobs/worker.env"


def test_worker_env_example_sets_the_redis_url() -> None:
    text = (DEPLOY / "worker.env.example").read_text(encoding="utf-8")
    assert re.search(r"^ASYNCJOBS_REDIS_URL=rediss?://", text, re.MULTILINE)


def test_kubernetes_worker_stops_gracefully_before_the_sigkill() -> None:
    argv = container()["command"]
    assert argv[:2] == ["asyncjobs", "worker"]
    assert TARGET.match(argv[2]), argv[2]
    pod = deployment()["spec"]["template"]["spec"]
    assert pod["terminationGracePeriodSeconds"] > grace_of(argv) + HANDBACK_S
    assert grace_of(argv) == grace_of(unit_argv())  # one story for both examples


def test_kubernetes_rolling_update_keeps_capacity() -> None:
    spec = deployment()["spec"]
    assert spec["strategy"]["type"] == "RollingUpdate"
    assert spec["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    assert spec["strategy"]["rollingUpdate"]["maxSurge"] >= 1


def test_kubernetes_liveness_probe_checks_this_pods_worker() -> None:
    probe = container()["livenessProbe"]
    assert probe["exec"]["command"] == ["asyncjobs", "check", "--this-host"]
    # Never longer than the period, or probes would pile up; long enough for Python to start.
    assert 5 <= probe["timeoutSeconds"] <= probe["periodSeconds"]
    assert probe["initialDelaySeconds"] > 0 and probe["failureThreshold"] >= 2


def test_kubernetes_redis_url_comes_from_a_secret() -> None:
    (var,) = [e for e in container()["env"] if e["name"] == "ASYNCJOBS_REDIS_URL"]
    assert "value" not in var
    ref = var["valueFrom"]["secretKeyRef"]
    secrets = [d for d in manifests()
               if d["kind"] == "Secret" and d["metadata"]["name"] == ref["name"]]
    assert len(secrets) == 1
    assert ref["key"] in {**secrets[0].get("data", {}), **secrets[0].get("stringData", {})}


def commands() -> list[list[str]]:
    """Every ``asyncjobs`` command line the examples run."""
    found = [unit_argv()[1:], container()["command"][1:]]
    for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
        if probe in container():
            argv = container()[probe]["exec"]["command"]
            assert argv[0] == "asyncjobs"
            found.append(argv[1:])
    return found


def help_text(command: str) -> str:
    env = {**os.environ, "COLUMNS": "200", "TERM": "dumb", "NO_COLOR": "1"}
    done = subprocess.run([sys.executable, "-m", "asyncjobs", command, "--help"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60, env=env)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_the_cli_has_every_flag_the_examples_use() -> None:
    used: dict[str, set[str]] = {}
    for argv in commands():
        used.setdefault(argv[0], set()).update(a for a in argv[1:] if a.startswith("--"))
    assert set(used) == {"worker", "check"}
    for command, flags in used.items():
        text = help_text(command)
        offered = set(re.findall(r"--[a-z][a-z-]*", text))
        assert flags <= offered, f"asyncjobs {command} has no {sorted(flags - offered)}"
        assert "ASYNCJOBS_REDIS_URL" in text  # both examples pass the URL this way


def test_the_examples_run_a_real_worker(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)  # as the unit's WorkingDirectory and the image's workdir
    for target in {unit_argv()[2], container()["command"][2]}:
        assert isinstance(load(target), Worker), target
