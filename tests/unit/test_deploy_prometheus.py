"""Prometheus rules (deploy/prometheus) with the real promtool, and the Grafana dashboard
(deploy/grafana) as data: every metric either one names is one the service exports.

tests/integration/test_prometheus_live.py evaluates the same expressions on a real Prometheus
scraping a running service.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from streamer.pipeline.metrics import Metrics
from tests.ops_tools import REPO, tool

RULES = REPO / "deploy" / "prometheus" / "streamer.rules.yml"
RULE_TESTS = REPO / "deploy" / "prometheus" / "tests" / "streamer.rules.test.yml"
DASHBOARD = REPO / "deploy" / "grafana" / "streamer.json"


def promtool(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(tool("promtool")), *args], capture_output=True, text=True, timeout=120, cwd=cwd,
        check=False,
    )  # fmt: skip


def rules() -> list[dict[str, Any]]:
    return [r for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]]


def dashboard() -> dict[str, Any]:
    data = json.loads(DASHBOARD.read_text())
    assert isinstance(data, dict)
    return data


def dashboard_exprs() -> list[str]:
    return [t["expr"] for p in dashboard()["panels"] for t in p["targets"]]


def exported_names() -> set[str]:
    """Every sample name the service's registry can export (histogram buckets, counter _total)."""
    names = {"up"}
    for family in Metrics().registry.collect():
        names.add(family.name)
        if family.type == "histogram":
            names |= {f"{family.name}_bucket", f"{family.name}_count", f"{family.name}_sum"}
        if family.type == "counter":
            names.add(f"{family.name}_total")
    return names


def referenced_metrics(expr: str) -> set[str]:
    """Raw metric names in a PromQL expression (recording rules have a ':' and are skipped)."""
    return set(re.findall(r"(?<![:\w])(streamer_[a-z0-9_]+)(?![:\w])", expr)) | (
        {"up"} if re.search(r"\bup\{", expr) else set()
    )


def test_promtool_check_rules() -> None:
    out = promtool("check", "rules", str(RULES))
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"SUCCESS: {len(rules())} rules found" in out.stdout


def test_promtool_unit_tests_pass() -> None:
    out = promtool("test", "rules", RULE_TESTS.name, cwd=RULE_TESTS.parent)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS" in out.stdout


def test_every_alert_is_unit_tested_firing() -> None:
    """Each alert fires in at least one promtool test case (not only its absence is tested)."""
    tests = yaml.safe_load(RULE_TESTS.read_text())["tests"]
    fired = {
        case["alertname"]
        for test in tests
        for case in test.get("alert_rule_test", [])
        if case.get("exp_alerts")
    }
    alerts = {r["alert"] for r in rules() if "alert" in r}
    assert alerts <= fired, f"never seen firing in a test: {sorted(alerts - fired)}"


def test_alerts_have_severity_and_summary() -> None:
    for rule in rules():
        if "alert" in rule:
            assert rule["labels"]["severity"] in ("page", "warning"), rule["alert"]
            assert rule["annotations"]["summary"], rule["alert"]


def test_burn_rate_alerts_follow_the_sre_workbook() -> None:
    """14.4x over 1h and 5m, 6x over 6h and 30m, against a 1% error budget."""
    by_name = {r["alert"]: " ".join(r["expr"].split()) for r in rules() if "alert" in r}
    fast, slow = by_name["StreamerLatencyBudgetBurnFast"], by_name["StreamerLatencyBudgetBurnSlow"]
    assert "ratio_rate1h > (14.4 * 0.01)" in fast and "ratio_rate5m > (14.4 * 0.01)" in fast
    assert "ratio_rate6h > (6 * 0.01)" in slow and "ratio_rate30m > (6 * 0.01)" in slow
    # The budgets are the service's defaults, at bucket edges the histogram has.
    from streamer.config import Settings
    from streamer.pipeline.metrics import LATENCY_BUCKETS

    settings = Settings()
    assert settings.p99_target_ms / 1000 in LATENCY_BUCKETS
    assert settings.duplicate_p99_target_ms / 1000 in LATENCY_BUCKETS
    text = RULES.read_text()
    assert f'route="intent", le="{settings.p99_target_ms / 1000}"' in text
    assert f'route="duplicate", le="{settings.duplicate_p99_target_ms / 1000}"' in text


def test_rules_and_dashboard_name_only_exported_metrics() -> None:
    exported = exported_names()
    exprs = [r["expr"] for r in rules()] + dashboard_exprs()
    for expr in exprs:
        unknown = referenced_metrics(expr) - exported
        assert not unknown, f"{unknown} in {expr!r}"
    recorded = {r["record"] for r in rules() if "record" in r}
    for expr in dashboard_exprs():
        for name in re.findall(r"[a-z_]+:[a-z0-9_:]+", expr):
            assert name in recorded, f"dashboard uses {name}, which no rule records"


def test_dashboard_shape() -> None:
    data = dashboard()
    panels = data["panels"]
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids))
    variables = {v["name"] for v in data["templating"]["list"]}
    assert {"datasource", "route"} <= variables
    for panel in panels:
        assert panel["title"] and panel["targets"], panel
        assert panel["datasource"]["uid"] == "${datasource}"
        for target in panel["targets"]:
            assert target["expr"].strip()
    # What an operator must find on it (issue 13).
    exprs = "\n".join(dashboard_exprs())
    for needle in (
        "streamer_end_to_end_seconds_bucket",
        "streamer_stage_seconds_bucket",
        "streamer_records_in_total",
        "streamer_results_out_total",
        "streamer_consumer_group_lag",
        "streamer_consumer_group_lag_seconds",
        "streamer_consumer_lag",
        "streamer_inflight_records",
        "streamer_paused_partitions",
        "streamer_dlq_total",
        "streamer_worker_restarts",
        "streamer_model_info",
    ):
        assert needle in exprs, needle


@pytest.mark.parametrize(
    ("expr", "names"),
    [
        (
            "max by (topic) (streamer_consumer_group_lag_seconds) > 30",
            {"streamer_consumer_group_lag_seconds"},
        ),
        ("topic:streamer_consumer_group_lag:sum", set()),
        ('streamer_ready == 0 or up{job="streamer"} == 0', {"streamer_ready", "up"}),
    ],
)
def test_metric_name_extraction(expr: str, names: set[str]) -> None:
    assert referenced_metrics(expr) == names
