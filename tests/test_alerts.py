"""examples/deploy's Prometheus alert rules and Grafana board use only metrics the worker
really exports; with ``promtool`` on PATH (Debian: ``apt-get install prometheus``) the
rules are also checked by it and each alert is shown to fire on made-up series."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from asyncjobs.metrics import EVENT_COUNTERS, WorkerMetrics

from .procs import ROOT

RULES = ROOT / "examples/deploy/prometheus-alerts.yml"
BOARD = ROOT / "examples/deploy/grafana-dashboard.json"
METRIC = re.compile(r"\b(asyncjobs_[a-z_]+)\b")
ALERTS = {"AsyncjobsQueueBacklogOld", "AsyncjobsHighFailureRate", "AsyncjobsDeadLettersGrowing",
          "AsyncjobsNoLiveWorkers", "AsyncjobsSchedulerLeaderMissing"}


def exported() -> set[str]:
    """Every sample name a worker's registry serves (counters' _total, histograms' _bucket,
    _count and _sum...), once each event has happened."""
    metrics = WorkerMetrics(worker="w", queues=["q"], concurrency=1)
    for event in EVENT_COUNTERS:
        metrics.count(event, "q", "t", 0.1)
    for gauge in (metrics.waiting, metrics.in_flight, metrics.delayed, metrics.dead,
                  metrics.oldest, metrics.leader, metrics.trimmed):
        gauge.labels(queue="q").set(1)
    metrics.heartbeat.labels(worker="w").set(1)
    return {s.name for family in metrics.registry.collect() for s in family.samples}


def rules() -> list[dict[str, Any]]:
    data = yaml.safe_load(RULES.read_text())
    return [rule for group in data["groups"] for rule in group["rules"]]


def board_expressions() -> list[str]:
    board = json.loads(BOARD.read_text())
    found = [t["expr"] for p in board["panels"] for t in p.get("targets", [])]
    found += [str(v.get("definition", "")) for v in board["templating"]["list"]]
    return found


def test_the_alert_rules_name_exported_metrics() -> None:
    names = exported()
    assert {"asyncjobs_jobs_failed_total", "asyncjobs_job_duration_seconds_bucket",
            "asyncjobs_queue_dead_letters"} <= names
    listed = rules()
    assert {r["alert"] for r in listed} == ALERTS
    for rule in listed:
        used = set(METRIC.findall(rule["expr"]))
        assert used, rule["alert"]
        assert used <= names, (rule["alert"], used - names)
        assert rule["labels"]["severity"] in ("warning", "critical")
        assert rule["annotations"]["summary"] and rule["annotations"]["description"]
        assert re.fullmatch(r"\d+[smh]", rule["for"])
        assert rule["expr"].count("(") == rule["expr"].count(")")


def test_the_grafana_board_names_exported_metrics() -> None:
    names = exported()
    board = json.loads(BOARD.read_text())
    assert board["uid"] and board["title"] == "asyncjobs" and board["panels"]
    expressions = board_expressions()
    used = {name for expr in expressions for name in METRIC.findall(expr)}
    assert used <= names, used - names
    assert {"asyncjobs_queue_waiting_jobs", "asyncjobs_jobs_failed_total",
            "asyncjobs_job_duration_seconds_bucket",
            "asyncjobs_worker_last_heartbeat_timestamp_seconds"} <= used
    for panel in board["panels"]:
        assert panel["datasource"]["uid"] == "${datasource}"  # no instance baked in
        assert all(e.count("(") == e.count(")") for e in (t["expr"] for t in panel["targets"]))
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))


def test_a_name_that_is_not_exported_is_caught() -> None:
    assert "asyncjobs_queue_waiting_total" not in exported()
    assert "asyncjobs_job_duration_seconds" not in exported()  # only its _bucket/_sum/_count


PROMTOOL_TESTS = """
rule_files: [{rules}]
evaluation_interval: 1m
tests:
  - interval: 1m
    input_series:
      - series: 'asyncjobs_queue_oldest_waiting_age_seconds{{queue="mail",instance="w1"}}'
        values: '400x20'
      - series: 'asyncjobs_queue_oldest_waiting_age_seconds{{queue="ok",instance="w1"}}'
        values: '3x20'
      - series: 'asyncjobs_jobs_failed_total{{queue="mail",task="t",instance="w1"}}'
        values: '0+10x30'
      - series: 'asyncjobs_jobs_succeeded_total{{queue="mail",task="t",instance="w1"}}'
        values: '0+10x30'
      - series: 'asyncjobs_jobs_started_total{{queue="mail",task="t",instance="w1"}}'
        values: '0+20x30'
      - series: 'asyncjobs_queue_dead_letters{{queue="mail",instance="w1"}}'
        values: '0+1x40'
      - series: 'asyncjobs_worker_last_heartbeat_timestamp_seconds{{worker="w1"}}'
        values: '0x40'
      - series: 'asyncjobs_queue_delayed_jobs{{queue="gone",instance="w2"}}'
        values: '5x5 _x30'
      - series: 'asyncjobs_queue_delayed_jobs{{queue="mail",instance="w1"}}'
        values: '0x40'
      - series: 'asyncjobs_scheduler_leader{{queue="stuck",instance="w1"}}'
        values: '0x40'
      - series: 'asyncjobs_scheduler_leader{{queue="stuck",instance="w3"}}'
        values: '0x40'
    alert_rule_test:
      - eval_time: 10m
        alertname: AsyncjobsQueueBacklogOld
        exp_alerts: [{{exp_labels: {{severity: warning, queue: mail}}}}]
      - eval_time: 25m
        alertname: AsyncjobsHighFailureRate
        exp_alerts: [{{exp_labels: {{severity: warning, queue: mail}}}}]
      - eval_time: 35m
        alertname: AsyncjobsDeadLettersGrowing
        exp_alerts: [{{exp_labels: {{severity: warning, queue: mail}}}}]
      - eval_time: 10m
        alertname: AsyncjobsNoLiveWorkers
        exp_alerts: [{{exp_labels: {{severity: critical}}}}]
      - eval_time: 20m
        alertname: AsyncjobsSchedulerLeaderMissing
        exp_alerts: [{{exp_labels: {{severity: critical, queue: gone}}}},
                     {{exp_labels: {{severity: critical, queue: stuck}}}}]
  - interval: 1m  # a healthy queue and a live worker: nothing fires
    input_series:
      - series: 'asyncjobs_worker_last_heartbeat_timestamp_seconds{{worker="w1"}}'
        values: '0+60x40'
      - series: 'asyncjobs_queue_delayed_jobs{{queue="mail",instance="w1"}}'
        values: '3x40'
      - series: 'asyncjobs_scheduler_leader{{queue="mail",instance="w1"}}'
        values: '1x40'
      - series: 'asyncjobs_scheduler_leader{{queue="mail",instance="w2"}}'
        values: '0x40'
      - series: 'asyncjobs_queue_dead_letters{{queue="mail",instance="w1"}}'
        values: '7x40'
      - series: 'asyncjobs_queue_oldest_waiting_age_seconds{{queue="mail",instance="w1"}}'
        values: '2x40'
      - series: 'asyncjobs_jobs_succeeded_total{{queue="mail",task="t",instance="w1"}}'
        values: '0+100x40'
      - series: 'asyncjobs_jobs_failed_total{{queue="mail",task="t",instance="w1"}}'
        values: '0+1x40'
      - series: 'asyncjobs_jobs_started_total{{queue="mail",task="t",instance="w1"}}'
        values: '0+101x40'
    alert_rule_test:
{healthy}
"""


def test_promtool_checks_and_fires_the_rules(tmp_path: Path) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        # CI installs it (.ci/run); there a missing promtool is a failure, never a skip.
        assert not os.environ.get("CI"), "promtool is not on PATH in CI"
        pytest.skip("promtool is not on PATH (apt-get install prometheus); the parsing "
                    "tests above check the metric names")
    check = subprocess.run([promtool, "check", "rules", str(RULES)], capture_output=True,
                           text=True, timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr
    # The cases compare labels; the same rules without annotations keep them short.
    bare = yaml.safe_load(RULES.read_text())
    for group in bare["groups"]:
        for rule in group["rules"]:
            del rule["annotations"]
    (tmp_path / "rules.yml").write_text(yaml.safe_dump(bare))
    cases = tmp_path / "cases.yml"
    healthy = "".join(f"      - {{eval_time: 35m, alertname: {name}, exp_alerts: []}}\n"
                      for name in sorted(ALERTS))
    cases.write_text(PROMTOOL_TESTS.format(rules=tmp_path / "rules.yml", healthy=healthy))
    fired = subprocess.run([promtool, "test", "rules", str(cases)], capture_output=True,
                           text=True, timeout=60)
    assert fired.returncode == 0, fired.stdout + fired.stderr
