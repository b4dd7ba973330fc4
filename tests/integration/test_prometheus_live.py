"""A real Prometheus (Debian's package) scrapes a running service under load, with the rules of
deploy/prometheus loaded: every rule evaluates without error, every recording rule records series,
every alert expression is valid PromQL on live data, and every query of the Grafana dashboard
(deploy/grafana/streamer.json) returns series.

Set STREAMER_DASHBOARD_PNG=path to also draw the dashboard's queries over the run into a PNG
(matplotlib, not Grafana: no Grafana package is reachable from these machines).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml

from streamer.kafka.local_broker import free_port
from streamer.records.samples import BAD_RECORDS
from tests.integration.pipeline_harness import (
    QUERIES,
    ServiceProcess,
    create_topics,
    pair_event,
    produce,
    query_event,
)
from tests.ops_tools import REPO, tool

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

RULES = REPO / "deploy" / "prometheus" / "streamer.rules.yml"
DASHBOARD = REPO / "deploy" / "grafana" / "streamer.json"


class Prometheus:
    """A Prometheus server on 127.0.0.1 scraping the given targets every second."""

    def __init__(self, workdir: Path, targets: list[str]) -> None:
        self.port = free_port()
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(RULES)],
            "scrape_configs": [{"job_name": "streamer", "static_configs": [{"targets": targets}]}],
        }
        (workdir / "prometheus.yml").write_text(yaml.safe_dump(config))
        self.log_path = workdir / "prometheus.log"
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            [
                str(tool("prometheus")),
                f"--config.file={workdir / 'prometheus.yml'}",
                f"--storage.tsdb.path={workdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--storage.tsdb.retention.time=1h",
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"prometheus exited:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/-/ready", timeout=2):
                    return
            except OSError:
                time.sleep(0.3)
        raise RuntimeError(f"prometheus not ready:\n{self.log_tail()}")

    def api(self, path: str, **params: str) -> Any:
        url = f"http://127.0.0.1:{self.port}/api/v1/{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        with urllib.request.urlopen(url, timeout=10) as resp:
            body = json.loads(resp.read())
        assert body["status"] == "success", body
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        data = self.api("query", query=expr)
        assert data["resultType"] == "vector", data
        result: list[dict[str, Any]] = data["result"]
        return result

    def log_tail(self) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-30:])

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self._log.close()


def dashboard_queries() -> list[tuple[str, str]]:
    """(panel title, PromQL) with Grafana's variables as a dashboard at 'All' would send them."""
    data = json.loads(DASHBOARD.read_text())
    return [
        (panel["title"], t["expr"].replace("$route", ".*").replace("$__rate_interval", "1m"))
        for panel in data["panels"]
        for t in panel["targets"]
    ]


def rule_exprs() -> list[tuple[str, str]]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [(r.get("record") or r["alert"], r["expr"]) for g in groups for r in g["rules"]]


def test_rules_and_dashboard_on_a_live_service(
    kafka_bootstrap: str, tiny_cpu_artifact: Path, tmp_path: Path
) -> None:
    topics = asyncio.run(create_topics(kafka_bootstrap, partitions=2))
    service = ServiceProcess(
        bootstrap=kafka_bootstrap, artifact=tiny_cpu_artifact, topics=topics,
        log_path=tmp_path / "service.log", extra_env={"STREAMER_GROUP_LAG_INTERVAL_S": "1"},
    )  # fmt: skip
    prometheus: Prometheus | None = None
    stop_load = threading.Event()

    def load() -> None:
        """Queries, pairs and a few malformed records, a little every second (bounded)."""
        i = 0
        deadline = time.monotonic() + 240
        while not stop_load.is_set() and time.monotonic() < deadline:
            queries = [
                (f"q{i}-{k}".encode(), query_event(f"q{i}-{k}", QUERIES[k % len(QUERIES)]))
                for k in range(20)
            ]
            pairs = [(f"p{i}-{k}".encode(), pair_event(f"p{i}-{k}", k)) for k in range(3)]
            bad = [(None, BAD_RECORDS[i % len(BAD_RECORDS)][2])]
            asyncio.run(produce(kafka_bootstrap, topics.queries, queries + bad))
            asyncio.run(produce(kafka_bootstrap, topics.pairs, pairs))
            i += 1
            stop_load.wait(1.0)

    loader = threading.Thread(target=load, daemon=True)
    try:
        service.start()
        prometheus = Prometheus(tmp_path, [f"127.0.0.1:{service.metrics_port}"])
        loader.start()
        started = time.time()

        records = {name for name, _ in rule_exprs() if ":" in name}
        wanted = dashboard_queries()
        missing: list[str] = []
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            missing = [name for name in sorted(records) if not prometheus.query(name)]
            missing += [f"{title}: {expr}" for title, expr in wanted if not prometheus.query(expr)]
            if not missing:
                break
            time.sleep(2)
        assert not missing, (
            f"no series for: {missing}\n--- service\n{service.log_tail()}\n"
            f"--- prometheus\n{prometheus.log_tail()}"
        )

        # Every rule evaluated, without error, on the live data.
        groups = prometheus.api("rules")["groups"]
        loaded = {r["name"]: r for g in groups for r in g["rules"]}
        assert set(loaded) == {name for name, _ in rule_exprs()}
        for name, rule in loaded.items():
            assert rule["health"] == "ok", (name, rule.get("lastError"))
            assert not rule["lastEvaluation"].startswith("0001-"), name
        # Alert expressions: valid PromQL here too (their result is empty on a healthy run).
        for _name, expr in rule_exprs():
            prometheus.query(expr)
        # The scrape target is up and the service says it is ready.
        assert prometheus.query('up{job="streamer"} == 1')
        assert prometheus.query("streamer_ready == 1")
        # Real values arrived: results were acknowledged and both routes had latency samples.
        routes = {
            s["metric"]["route"] for s in prometheus.query("route:streamer_results_out:rate1m > 0")
        }
        assert routes == {"intent", "duplicate"}, routes
        assert prometheus.query("code:streamer_dlq:rate5m > 0")
        partitions = prometheus.query("topic_partition:streamer_consumer_group_lag:max")
        assert {s["metric"]["topic"] for s in partitions} == {topics.queries, topics.pairs}

        png = os.environ.get("STREAMER_DASHBOARD_PNG")
        if png:
            # Let the load run a while so the picture has time series, not points.
            seconds = float(os.environ.get("STREAMER_DASHBOARD_SECONDS", "120"))
            time.sleep(max(0.0, started + seconds - time.time()))
            draw_dashboard(prometheus, started, time.time(), Path(png))
    finally:
        stop_load.set()
        if loader.is_alive():
            loader.join(timeout=30)
        if prometheus is not None:
            prometheus.stop()
        service.stop()


def draw_dashboard(prometheus: Prometheus, start: float, end: float, out: Path) -> None:
    """The dashboard's panels over the run, each query as range data (matplotlib)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = json.loads(DASHBOARD.read_text())
    panels = [p for p in data["panels"] if p["type"] == "timeseries"]
    cols = 2
    rows = (len(panels) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(14, 3.2 * rows), squeeze=False)
    for ax, panel in zip(axes.flat, panels, strict=False):
        for target in panel["targets"]:
            expr = target["expr"].replace("$route", ".*").replace("$__rate_interval", "1m")
            result = prometheus.api(
                "query_range", query=expr, start=str(start), end=str(end), step="2"
            )["result"]
            for series in result:
                legend = target.get("legendFormat", "")
                for key, value in series["metric"].items():
                    legend = legend.replace("{{" + key + "}}", value)
                xs = [float(t) - start for t, _ in series["values"]]
                ys = [float(v) for _, v in series["values"]]
                ax.plot(xs, ys, label=legend[:40], marker=".", markersize=2, linewidth=1)
        ax.set_title(panel["title"], fontsize=9)
        ax.tick_params(labelsize=7)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=6, loc="upper left")
    for ax in list(axes.flat)[len(panels) :]:
        ax.axis("off")
    fig.suptitle("streamer dashboard queries on a live run (seconds since start)", fontsize=11)
    fig.tight_layout(rect=(0, 0, 1, 0.98))
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=80)
    plt.close(fig)
