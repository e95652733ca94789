"""A real Prometheus scrapes a real server; the deploy/ examples (scrape config, alert rules, dashboard) hold up.

Prometheus and promtool come from Debian's ``prometheus`` package (``scripts/install-prometheus.sh``, run by
``.ci/run``); where they are missing the tests that need them skip and say so. Everything runs on loopback, and
every wait is bounded by a deadline.
"""

from __future__ import annotations

import json
import math
import re
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.metrics import MetricWrapperBase

from server.metrics import Metrics
from tests.integration.helpers import PROBE_INPUTS, ServerHandle, Servers, client_code, train_toy

pytestmark = pytest.mark.integration

REPO_ROOT = Path(__file__).resolve().parents[2]
DEPLOY = REPO_ROOT / "deploy"
DASHBOARD = DEPLOY / "grafana-dashboard.json"
RULES = DEPLOY / "taskpatch-rules.yml"
METRICS_DOC = REPO_ROOT / "docs" / "metrics.md"
INSTALL_HINT = "install it with scripts/install-prometheus.sh (Debian package `prometheus`, needs root)"

PREDICT_OK_CALLS = 7
PREDICT_NOT_FOUND_CALLS = 2
INPUTS_PER_CALL = 3
DEADLINE_S = 30.0
# Sample-name suffixes each metric type exposes (Prometheus has no series under a histogram's bare name).
SAMPLE_SUFFIXES = {
    "counter": ("_total",),
    "gauge": ("",),
    "histogram": ("_bucket", "_sum", "_count"),
    "info": ("_info",),
}
METRIC_NAME = re.compile(r"\btaskpatch_[a-z_]+")


def _binary(name: str) -> str | None:
    found = shutil.which(name)
    if found is None and Path(f"/usr/bin/{name}").is_file():
        found = f"/usr/bin/{name}"
    return found


def _require(name: str) -> str:
    path = _binary(name)
    if path is None:
        pytest.skip(f"`{name}` not found on PATH or in /usr/bin; {INSTALL_HINT}")
    return path


def _declared_metrics() -> list[tuple[str, str]]:
    """(name without the _total/_info suffix, type) of every metric in server.metrics.Metrics."""
    return [(m._name, str(m._type)) for m in vars(Metrics()).values() if isinstance(m, MetricWrapperBase)]


def declared_sample_names() -> set[str]:
    """Every series name the server can expose, e.g. taskpatch_rpc_requests_total, taskpatch_batch_tasks_bucket."""
    return {name + suffix for name, kind in _declared_metrics() for suffix in SAMPLE_SUFFIXES[kind]}


def dashboard_expressions() -> list[str]:
    """Every PromQL expression of the dashboard: panel targets (rows included) and template-variable queries."""
    dashboard = json.loads(DASHBOARD.read_text())
    exprs: list[str] = []

    def visit(panels: list[dict[str, Any]]) -> None:
        for panel in panels:
            exprs.extend(target["expr"] for target in panel.get("targets", []) if target.get("expr"))
            visit(panel.get("panels", []))

    visit(dashboard["panels"])
    for variable in dashboard["templating"]["list"]:
        query = variable.get("query")
        exprs.append(query["query"] if isinstance(query, dict) else query)
    return exprs


def rule_expressions() -> list[str]:
    # No YAML parser needed: every rule's expression follows `expr:`, on the same line or as a `|` block.
    exprs, lines = [], RULES.read_text().splitlines()
    for i, line in enumerate(lines):
        key, _, rest = line.strip().partition(":")
        if key != "expr":
            continue
        if rest.strip() != "|":
            exprs.append(rest.strip())
            continue
        indent = len(line) - len(line.lstrip()) + 2
        block = []
        for following in lines[i + 1 :]:
            if following.strip() and len(following) - len(following.lstrip()) < indent:
                break
            block.append(following.strip())
        exprs.append(" ".join(block).strip())
    return exprs


# ---- files only ------------------------------------------------------------------------------------------------


def test_dashboard_uses_only_declared_metrics() -> None:
    exprs = dashboard_expressions()
    used = {name for expr in exprs for name in METRIC_NAME.findall(expr)}
    assert len(used) >= 15, used  # the extraction found the panels' metrics at all
    undeclared = used - declared_sample_names()
    assert not undeclared, f"the dashboard uses series that server/metrics.py does not declare: {sorted(undeclared)}"


def test_dashboard_is_importable_with_a_prometheus_datasource_input() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert [(i["name"], i["type"], i["pluginId"]) for i in dashboard["__inputs"]] == [
        ("DS_PROMETHEUS", "datasource", "prometheus")
    ]
    assert dashboard["schemaVersion"] >= 36
    panels = dashboard["panels"]
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids))
    for panel in panels:
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}, panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${DS_PROMETHEUS}", panel["title"]
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]


def test_alert_rules_use_only_declared_metrics() -> None:
    exprs = rule_expressions()
    assert len(exprs) >= 3, exprs
    used = {name for expr in exprs for name in METRIC_NAME.findall(expr)}
    undeclared = used - declared_sample_names()
    assert used and not undeclared, (
        f"the rules use series that server/metrics.py does not declare: {sorted(undeclared)}"
    )


def test_metrics_doc_lists_every_metric() -> None:
    doc = METRICS_DOC.read_text()
    for name, kind in _declared_metrics():
        suffix = {"counter": "_total", "info": "_info"}.get(kind, "")
        assert f"| `{name}{suffix}` | {kind} |" in doc, name


# ---- promtool ----------------------------------------------------------------------------------------------------


def test_promtool_accepts_the_example_config_rules_and_rule_tests() -> None:
    promtool = _require("promtool")
    for args in (
        ["check", "config", "prometheus.yml"],  # also checks the rule files it loads
        ["check", "rules", "taskpatch-rules.yml"],
        ["test", "rules", "taskpatch-rules.test.yml"],  # each alert fires when it should
    ):
        done = subprocess.run([promtool, *args], cwd=DEPLOY, capture_output=True, text=True, timeout=60, check=False)
        assert done.returncode == 0, f"promtool {' '.join(args)}:\n{done.stdout}\n{done.stderr}"


# ---- a real Prometheus -------------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Prometheus:
    """A Prometheus process on loopback and a small client for its HTTP API."""

    process: subprocess.Popen[bytes]
    port: int
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def get(self, path: str, **params: str) -> Any:
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        with urllib.request.urlopen(f"{self.url}{path}{query}", timeout=5) as response:
            return json.loads(response.read())

    def query(self, expr: str) -> list[tuple[dict[str, str], float]]:
        """An instant query's vector result as (labels, value) pairs."""
        body = self.get("/api/v1/query", query=expr)
        assert body["status"] == "success", body
        assert body["data"]["resultType"] == "vector", body
        return [(r["metric"], float(r["value"][1])) for r in body["data"]["result"]]

    def value(self, expr: str) -> float | None:
        """The value of a query with at most one series; None while it has none."""
        result = self.query(expr)
        assert len(result) <= 1, f"{expr} returned several series: {result}"
        return result[0][1] if result else None

    def wait_until(self, what: str, predicate: Callable[[], bool]) -> None:
        deadline = time.monotonic() + DEADLINE_S
        while not predicate():
            assert self.process.poll() is None, f"prometheus exited:\n{self.log.read_text()[-4000:]}"
            if time.monotonic() > deadline:
                raise AssertionError(f"{what}: not within {DEADLINE_S} s")
            time.sleep(0.25)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=15)


def start_prometheus(binary: str, workdir: Path, metrics_port: int) -> Prometheus:
    """Scrape 127.0.0.1:<metrics_port> every second, with deploy/taskpatch-rules.yml loaded; wait until ready."""
    config = workdir / "prometheus.yml"
    config.write_text(
        "global:\n"
        "  scrape_interval: 1s\n"
        "  scrape_timeout: 1s\n"
        "  evaluation_interval: 1s\n"
        "rule_files:\n"
        f"  - {json.dumps(str(RULES))}\n"
        "scrape_configs:\n"
        "  - job_name: taskpatch\n"
        "    static_configs:\n"
        f"      - targets: ['127.0.0.1:{metrics_port}']\n"
    )
    failures = []
    for attempt in range(3):  # the free port can be taken between probing and binding it
        port, log = _free_port(), workdir / f"prometheus-{attempt}.log"
        with log.open("wb") as out:
            process = subprocess.Popen(
                [
                    binary,
                    f"--config.file={config}",
                    f"--storage.tsdb.path={workdir / f'tsdb-{attempt}'}",
                    f"--web.listen-address=127.0.0.1:{port}",
                    "--log.level=info",
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        prometheus = Prometheus(process, port, log)
        try:
            deadline = time.monotonic() + DEADLINE_S
            while process.poll() is None and time.monotonic() < deadline:
                try:
                    with urllib.request.urlopen(f"{prometheus.url}/-/ready", timeout=2) as response:
                        if response.status == 200:
                            return prometheus
                except (urllib.error.URLError, ConnectionError, TimeoutError):
                    pass
                time.sleep(0.2)
        except BaseException:
            prometheus.stop()  # interrupted while waiting: no orphaned Prometheus
            raise
        prometheus.stop()
        failures.append(log.read_text()[-2000:])
    raise AssertionError("prometheus did not become ready:\n" + "\n----\n".join(failures))


@pytest.fixture
def prometheus_binary() -> str:
    return _require("prometheus")  # before the server starts: no server for a test that will skip


@pytest.fixture
def server(tmp_path: Path, prometheus_binary: str) -> Iterator[ServerHandle]:
    pool = Servers(tmp_path)
    try:
        yield pool.start(metrics_port=0)
    finally:
        pool.stop_all()


@pytest.fixture
def prometheus(tmp_path: Path, prometheus_binary: str, server: ServerHandle) -> Iterator[Prometheus]:
    workdir = tmp_path / "prometheus"
    workdir.mkdir()
    started = start_prometheus(prometheus_binary, workdir, server.metrics_port)
    try:
        yield started
    finally:
        started.stop()


def test_prometheus_scrapes_the_traffic_the_server_handled(server: ServerHandle, prometheus: Prometheus) -> None:
    client, job = server.client, 'job="taskpatch"'
    prometheus.wait_until("first scrape", lambda: prometheus.value(f"up{{{job}}}") == 1)

    # Phase 1: the NOT_FOUND calls create the Predict latency series and training runs; wait until Prometheus has
    # stored them, so that phase 2 is an *increase* of those series and rate() over them is not zero.
    inputs = list(PROBE_INPUTS[:INPUTS_PER_CALL])
    for _ in range(PREDICT_NOT_FOUND_CALLS):
        assert client_code(lambda: client.predict("nosuchtask", inputs)) == "NOT_FOUND"
    train_toy(client, "toy", n_train=20, n_dev=10, epochs=1)
    not_found = f'taskpatch_rpc_requests_total{{{job}, rpc="Predict", code="NOT_FOUND"}}'
    prometheus.wait_until("NOT_FOUND calls scraped", lambda: prometheus.value(not_found) == PREDICT_NOT_FOUND_CALLS)

    # Phase 2: successful predictions.
    for _ in range(PREDICT_OK_CALLS):
        assert len(client.predict("toy", inputs).predictions) == INPUTS_PER_CALL

    expected = {
        f"up{{{job}}}": 1,
        f'taskpatch_rpc_requests_total{{{job}, rpc="Predict", code="OK"}}': PREDICT_OK_CALLS,
        not_found: PREDICT_NOT_FOUND_CALLS,
        f'taskpatch_rpc_requests_total{{{job}, rpc="AddTask", code="OK"}}': 1,
        f"sum(taskpatch_predict_examples_total{{{job}}})": PREDICT_OK_CALLS * INPUTS_PER_CALL,
        f"taskpatch_batch_size_examples_sum{{{job}}}": PREDICT_OK_CALLS * INPUTS_PER_CALL,
        f"taskpatch_tasks_stored{{{job}}}": 1,
        f"taskpatch_tasks_unhealthy{{{job}}}": 0,
        f'taskpatch_training_jobs_finished_total{{{job}, state="succeeded"}}': 1,
        f'taskpatch_backbone_info{{{job}, backbone_id="tiny-random-bert:0"}}': 1,
    }
    buckets = f'taskpatch_rpc_latency_seconds_bucket{{{job}, rpc="Predict"}}'
    p50 = f"histogram_quantile(0.5, sum by (le) (rate({buckets}[1m])))"
    observed: dict[str, float | None] = {}

    def arrived() -> bool:
        observed.update({expr: prometheus.value(expr) for expr in [*expected, p50]})
        latency = observed[p50]
        return all(observed[e] == v for e, v in expected.items()) and latency is not None and math.isfinite(latency)

    try:
        prometheus.wait_until("the expected values", arrived)
    finally:
        print("\nPrometheus observed:\n" + "\n".join(f"  {expr} = {value}" for expr, value in observed.items()))
    assert 0 < observed[p50] < 30  # type: ignore[operator]

    # By rpc, as the dashboard plots it: a finite p50 at least for Predict.
    by_rpc = prometheus.query("histogram_quantile(0.5, rate(taskpatch_rpc_latency_seconds_bucket[1m]))")
    assert any(labels.get("rpc") == "Predict" and math.isfinite(v) for labels, v in by_rpc), by_rpc


def test_prometheus_evaluates_the_dashboard_and_the_rules(server: ServerHandle, prometheus: Prometheus) -> None:
    prometheus.wait_until("first scrape", lambda: prometheus.value('up{job="taskpatch"}') == 1)
    train_toy(server.client, "toy", n_train=20, n_dev=10, epochs=1)
    server.client.predict("toy", list(PROBE_INPUTS[:INPUTS_PER_CALL]))

    # Grafana's variables, as Grafana would substitute them; then every expression must be valid PromQL.
    substitutions = {"$__rate_interval": "1m", "$__range": "5m", "$job": "taskpatch", "$instance": ".*"}
    with_data, evaluated = 0, 0
    for expr in dashboard_expressions():
        if expr.startswith("label_values("):
            continue  # a Grafana function, not PromQL
        for variable, value in substitutions.items():
            expr = expr.replace(variable, value)
        assert "$" not in expr, expr
        try:
            with_data += bool(prometheus.query(expr))
            evaluated += 1
        except urllib.error.HTTPError as err:
            raise AssertionError(f"{expr}: {err.read().decode()}") from None
    assert with_data > 0

    # Every rule of deploy/taskpatch-rules.yml evaluates without error against live series, and none fires.
    def rules() -> list[dict[str, Any]]:
        groups = prometheus.get("/api/v1/rules")["data"]["groups"]
        return [rule for group in groups for rule in group["rules"]]

    prometheus.wait_until("rules evaluated", lambda: all(r["health"] != "unknown" for r in rules()) and bool(rules()))
    assert [(r["name"], r["health"], r.get("lastError")) for r in rules() if r["health"] != "ok"] == []
    alerts = prometheus.get("/api/v1/alerts")["data"]["alerts"]
    print(
        f"\ndashboard: {evaluated} expressions valid, {with_data} with data; "
        f"rules: {[(r['name'], r['health']) for r in rules()]}; alerts: {alerts}"
    )
    assert [a for a in alerts if a["state"] == "firing"] == []
