"""The Prometheus alert rules: valid for promtool, each alert exercised by `promtool test
rules`, well-formed for operators, and using only metrics the exporter really serves.

promtool comes from Debian's `prometheus` package (scripts/install-system-deps).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from orderflow_ingest.ops import collector

ROOT = Path(__file__).resolve().parents[1]
RULES = ROOT / "orderflow_ingest" / "ops" / "alerts" / "orderflow-ingest.rules.yml"
# Minute-scale cases, and day-scale ones evaluated every 10 minutes (promtool steps through
# every evaluation: a week at 1m steps took minutes).
PROMTOOL_TESTS = tuple(
    Path(__file__).parent / "data" / name for name in ("alerts.test.yml", "alerts.long.test.yml")
)
PACKAGE = ROOT / "orderflow_ingest"

# Series Prometheus makes itself, not the exporter.
PROMETHEUS_OWN = {"up"}
PROMQL_WORDS = {
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "and",
    "or",
    "unless",
    "bool",
    "offset",
    "inf",
    "nan",
}
# The gauges the collector builds at scrape time (see orderflow_ingest/ops/collector.py).
SCRAPE_TIME_NAMES = {
    "orderflow_exporter_backend_up",
    "orderflow_exporter_backend_seconds",
    "orderflow_postfix_queue_messages",
    "orderflow_postfix_queue_recipients",
    "orderflow_postfix_queue_size_bytes",
    "orderflow_postfix_queue_oldest_seconds",
    "orderflow_rq_jobs",
    "orderflow_rq_workers",
    "orderflow_messages_pending",
    "orderflow_ingest_lag_seconds",
    "orderflow_disk_free_bytes",
    "orderflow_disk_size_bytes",
    "orderflow_disk_min_free_bytes",
    "orderflow_tls_certificate_expiry_seconds",
    # orderflow_ingest/webhooks/gauges.py
    "orderflow_webhook_oldest_undelivered_seconds",
    "orderflow_webhook_deliveries_pending",
    "orderflow_webhook_fanout_age_seconds",
    "orderflow_webhook_endpoints",
    # orderflow_ingest/domains/gauges.py
    "orderflow_custom_domains",
}


def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.fail("promtool is missing: install Debian's `prometheus` package")
    return path


def load_rules() -> list[dict[str, Any]]:
    data = yaml.safe_load(RULES.read_text())
    return [rule for group in data["groups"] for rule in group["rules"]]


def metric_names(expr: str) -> set[str]:
    """Metric names a PromQL expression selects (functions, keywords, labels left out)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    text = re.sub(r"\{[^}]*\}", "", text)
    text = re.sub(r"\[[^\]]*\]", "", text)
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    names = set()
    for match in re.finditer(r"(?<![0-9.])[a-zA-Z_:][a-zA-Z0-9_:]*", text):
        name = match.group(0)
        if text[match.end() :].lstrip().startswith("(") or name.lower() in PROMQL_WORDS:
            continue
        names.add(name)
    return names


def test_metric_name_extraction() -> None:
    expr = (
        'sum by (instance) (rate(a_total{decision="tempfail"}[10m])) / sum(rate(a_total[5m]))'
        ' > 0.05 and on (instance, queue) b{x=~"y|z"} > 1e9 or predict_linear(c[1h], 4 * 3600)'
    )
    assert metric_names(expr) == {"a_total", "b", "c"}


def test_rules_pass_promtool_check() -> None:
    result = subprocess.run(
        [promtool(), "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_rules_fire_as_promtool_unit_tests_expect(tmp_path: Path) -> None:
    """Expressions, `for` and labels, against synthetic series. Annotations are stripped
    from the copy under test: promtool compares them verbatim, and `check rules` already
    validated their templates."""
    data = yaml.safe_load(RULES.read_text())
    for group in data["groups"]:
        for rule in group["rules"]:
            rule.pop("annotations", None)
    rules_copy = tmp_path / "rules.yml"
    rules_copy.write_text(yaml.safe_dump(data))
    for tests_file in PROMTOOL_TESTS:
        spec = yaml.safe_load(tests_file.read_text())
        spec["rule_files"] = [str(rules_copy)]
        spec_file = tmp_path / tests_file.name
        spec_file.write_text(yaml.safe_dump(spec))
        result = subprocess.run(
            [promtool(), "test", "rules", str(spec_file)],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert result.returncode == 0, tests_file.name + result.stdout + result.stderr


def test_every_alert_has_a_promtool_case_that_fires_it() -> None:
    firing = {
        case["alertname"]
        for tests_file in PROMTOOL_TESTS
        for test in yaml.safe_load(tests_file.read_text())["tests"]
        for case in test.get("alert_rule_test", [])
        if case.get("exp_alerts")
    }
    assert {rule["alert"] for rule in load_rules()} <= firing


def test_issue_5_alerts_are_all_there() -> None:
    """Processing errors, deferred queue, ingest lag, disk, milter tempfail, exporter down."""
    used = set().union(*(metric_names(rule["expr"]) for rule in load_rules()))
    for name in (
        "smtp_processing_errors_total",
        "orderflow_postfix_queue_messages",
        "orderflow_postfix_queue_oldest_seconds",
        "orderflow_ingest_lag_seconds",
        "orderflow_disk_free_bytes",
        "orderflow_milter_decisions_total",
        "up",
    ):
        assert name in used, name


def test_rules_are_well_formed_for_operators() -> None:
    names = set()
    for rule in load_rules():
        assert rule["alert"] not in names, f"duplicate alert {rule['alert']}"
        names.add(rule["alert"])
        assert re.fullmatch(r"Orderflow[A-Za-z]+", rule["alert"])
        assert rule["labels"]["severity"] in ("warning", "critical"), rule["alert"]
        assert re.fullmatch(r"\d+[smh]", rule["for"]), rule["alert"]
        annotations = rule["annotations"]
        assert annotations["summary"] and annotations["description"], rule["alert"]
        assert len(annotations["summary"]) < 120, rule["alert"]


def source_recorded_names() -> set[str]:
    """Metric names the components record (string literals passed to metrics.count/observe,
    directly or through a module constant)."""
    names = set()
    for path in PACKAGE.rglob("*.py"):
        text = path.read_text()
        names.update(re.findall(r'metrics\.(?:count|observe)\(\s*"([a-z_:]+)"', text))
        constants = dict(re.findall(r'^([A-Z_]+)\s*=\s*"([a-z_:]+)"', text, re.MULTILINE))
        for constant in re.findall(r"metrics\.(?:count|observe)\(\s*([A-Z_]+)\b", text):
            if constant in constants:
                names.add(constants[constant])
    return names


def test_every_metric_in_the_rules_is_exported_or_recorded() -> None:
    """Static half of the check (the stack test scrapes a live exporter for the rest): a
    name is either a gauge the collector builds, or one a component records into the hash
    (which the collector exports under the same name, histograms as _bucket/_sum/_count)."""
    recorded = source_recorded_names()
    assert "smtp_emails_received_total" in recorded  # the scan itself works
    assert "orderflow_milter_decisions_total" in recorded
    histogram_series = {
        name + suffix
        for name in collector.metrics.HISTOGRAMS
        for suffix in ("_bucket", "_sum", "_count")
    }
    known = SCRAPE_TIME_NAMES | recorded | histogram_series | PROMETHEUS_OWN
    for rule in load_rules():
        missing = metric_names(rule["expr"]) - known
        assert not missing, f"{rule['alert']} uses {missing}, which nothing exports"
