"""
What ships in deploy/ works as shipped: promtool accepts llmux's /metrics, the
Prometheus config and the alert rules (and the rules fire when they should);
the YAML manifests parse and hold what operators rely on; and every PromQL
expression of every panel of the Grafana dashboard returns data from a real
Prometheus scraping a real llmux that served traffic of every kind (streams,
a queued request, a dead node with connect errors and retries, errors).

promtool and prometheus come from the Debian package `prometheus`; without
them the Prometheus tests are skipped, with the reason.
"""
import configparser
import json
import math
import re
import shutil
import socket
import subprocess
import threading
import time
import httpx
import pytest
import yaml

from conftest import REPO, T, bin_path, clean_env
from e2e_util import wait_for

DEPLOY = REPO / "deploy"
DASHBOARD = DEPLOY / "grafana" / "llmux-dashboard.json"
PROM_CONFIG = DEPLOY / "prometheus" / "prometheus.yml"
PROM_RULES = DEPLOY / "prometheus" / "alerts.yml"
PROM_RULES_TEST = DEPLOY / "prometheus" / "alerts_test.yml"
CHAT = "/v1/chat/completions"

# The first seed's dashboard (grafana/dashboards/inference.json): its seven
# panels keep their titles, so its users find them.
SEED_PANELS = ("Requests/sec", "Active requests", "Queue depth", "Requests per node (rate)",
               "Active requests per node", "Node failures (rate)")
SEED_LATENCY_PANEL = "Latency p50 / p95 / p99"  # the seed's "p95 Latency", widened

# What Grafana substitutes in the expressions, for evaluation here.
RATE_WINDOW = "30s"


def need(tool):
    path = shutil.which(tool)
    if not path:
        pytest.skip("%s not installed (Debian package prometheus: apt-get install -y "
                    "prometheus)" % tool)
    return path


def run(argv, timeout=30, stdin=None):
    return subprocess.run(argv, input=stdin, capture_output=True, timeout=T(timeout),
                          env=clean_env())


def free_port():
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def load_dashboard():
    return json.loads(DASHBOARD.read_text())


def all_panels(dash):
    """Every panel, rows' nested panels included."""
    out = []
    for p in dash["panels"]:
        out.append(p)
        out.extend(p.get("panels", []))
    return out


def panel_exprs(dash):
    """[(panel title, refId, expr)] of every query of every panel."""
    out = []
    for p in all_panels(dash):
        for t in p.get("targets", []):
            out.append((p["title"], t.get("refId"), t.get("expr", "")))
    return out


def substitute(expr, model=".*", node=".*", instance=".*"):
    """Replaces the dashboard's template variables as Grafana would."""
    for k, v in (("$__rate_interval", RATE_WINDOW), ("$__interval", "5s"),
                 ("${model}", model), ("$model", model), ("${node}", node), ("$node", node),
                 ("${instance}", instance), ("$instance", instance)):
        expr = expr.replace(k, v)
    return expr


# ---------------------------------------------------------------------------
# Static checks of the shipped files.

def test_dashboard_structure():
    dash = load_dashboard()
    assert 36 <= dash["schemaVersion"] <= 39, "schemaVersion of Grafana 9/10"
    assert dash["uid"] and dash["title"]
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    ds = variables["DS_PROMETHEUS"]
    assert ds["type"] == "datasource" and ds["query"] == "prometheus"
    # One llmux or several: the instance variable, and model and node offer
    # the values of the chosen instances.
    for name, metric in (("instance", "llmux_build_info"),
                         ("model", 'llmux_requests_total{instance=~"$instance"}'),
                         ("node", 'llmux_node_healthy{instance=~"$instance"}')):
        v = variables[name]
        assert v["type"] == "query"
        assert v["query"]["query"] == "label_values(%s, %s)" % (metric, name)
        assert v["datasource"] == {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}
        assert v["includeAll"] and v["allValue"] == ".*"

    panels = all_panels(dash)
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    titles = [p["title"] for p in panels]
    assert len(titles) == len(set(titles)), "panel titles must be unique"
    for t in SEED_PANELS + (SEED_LATENCY_PANEL, "Node health", "Error rate",
                            "Time to first token p50 / p95 / p99", "Token throughput by kind",
                            "Rejections by reason", "Upstream errors by kind", "Retries",
                            "Queue wait p50 / p95 / p99", "KV-cache use per node",
                            "Waiting requests per node", "Requests by endpoint",
                            "Errors by endpoint", "Retries refused by the budget",
                            "Hedges by outcome", "Stream resumes by outcome",
                            "Node time to first token p50 / p95",
                            "Node inter-token latency p50 / p95",
                            "Prefix-cache hit rate by node"):
        assert t in titles, "panel %r missing" % t

    for p in panels:
        if p["type"] == "row":
            continue
        assert p["datasource"] == {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}, p["title"]
        assert p["targets"], "panel %r has no query" % p["title"]
        for t in p["targets"]:
            assert t["datasource"]["uid"] == "${DS_PROMETHEUS}", p["title"]
            assert t["expr"].strip(), p["title"]
            left = re.findall(r"\$\{?\w+", substitute(t["expr"]))
            assert not left, "unknown variable %s in %r" % (left, p["title"])
        g = p["gridPos"]
        assert g["x"] + g["w"] <= 24, p["title"]

    # Every llmux series a panel reads is filtered by the instance variable.
    for title, ref, expr in panel_exprs(dash):
        for m in re.finditer(r"\b(llmux_\w+)(\{[^}]*\})?", expr):
            assert 'instance=~"$instance"' in (m.group(2) or ""), (title, ref, m.group(0))
    # Token rates read as tokens/s.
    for p in panels:
        if p["type"] != "row" and "llmux_tok" in json.dumps(p["targets"]):
            assert p["fieldConfig"]["defaults"]["unit"] == "suffix: tok/s", p["title"]

    # The error-ratio panel counts what the LlmuxHighErrorRate alert counts:
    # the same series in the numerator and the denominator (the panel adds
    # its variables' filters) and the alert's threshold as the panel's red.
    def selectors(expr):
        out = []
        for m in re.finditer(r"\b(llmux_\w+)(\{[^}]*\})?", expr):
            found = re.findall(r'(\w+)\s*(=~|!~|!=|=)\s*"([^"]*)"', m.group(2) or "")
            out.append((m.group(1), sorted(f for f in found if f[0] not in ("model", "instance"))))
        return out
    ratio = next(p for p in panels if p["title"] == "Error ratio")
    rule = next(r for g in yaml.safe_load(PROM_RULES.read_text())["groups"] for r in g["rules"]
                if r.get("alert") == "LlmuxHighErrorRate")
    assert selectors(ratio["targets"][0]["expr"]) == selectors(rule["expr"]), (
        ratio["targets"][0]["expr"], rule["expr"])
    threshold = float(re.search(r"\)\s*>\s*([0-9.]+)\s*$", rule["expr"].strip()).group(1))
    steps = ratio["fieldConfig"]["defaults"]["thresholds"]["steps"]
    assert steps[-1]["color"] == "red" and steps[-1]["value"] == threshold, steps

    # The latency panel keeps the seed's p95, next to p50 and p99.
    lat = next(p for p in panels if p["title"] == SEED_LATENCY_PANEL)
    assert [t["expr"].split(",")[0] for t in lat["targets"]] == [
        "histogram_quantile(0.5", "histogram_quantile(0.95", "histogram_quantile(0.99"]


def test_manifests_parse(tmp_path):
    yaml = pytest.importorskip("yaml", reason="python3-yaml not installed")

    prov = yaml.safe_load((DEPLOY / "grafana/provisioning/dashboards/llmux.yaml").read_text())
    provider = prov["providers"][0]
    assert prov["apiVersion"] == 1 and provider["type"] == "file"
    assert provider["options"]["path"].startswith("/")
    dsp = yaml.safe_load((DEPLOY / "grafana/provisioning/datasources/llmux.yaml").read_text())
    assert dsp["datasources"][0]["type"] == "prometheus"

    docs = list(yaml.safe_load_all((DEPLOY / "kubernetes/llmux.yaml").read_text()))
    by_kind = {d["kind"]: d for d in docs}
    assert set(by_kind) == {"ConfigMap", "Deployment", "Service"}
    pod = by_kind["Deployment"]["spec"]["template"]
    assert pod["metadata"]["annotations"]["prometheus.io/scrape"] == "true"
    assert pod["metadata"]["annotations"]["prometheus.io/path"] == "/metrics"
    c = pod["spec"]["containers"][0]
    assert c["readinessProbe"]["httpGet"]["path"] == "/health"
    port = int(pod["metadata"]["annotations"]["prometheus.io/port"])
    assert c["ports"][0]["containerPort"] == port
    assert by_kind["Service"]["spec"]["selector"] == by_kind["Deployment"]["spec"]["selector"][
        "matchLabels"]

    # The ConfigMap's config.json is a config llmux accepts.
    cfg = tmp_path / "config.json"
    cfg.write_text(by_kind["ConfigMap"]["data"]["config.json"])
    r = run([bin_path("llmux"), "--check-config", "--config", str(cfg)])
    assert r.returncode == 0, r.stderr.decode()
    assert json.loads(r.stdout)["max_concurrent_requests"] == 256

    for f in (PROM_CONFIG, PROM_RULES, PROM_RULES_TEST):
        assert yaml.safe_load(f.read_text()), f


def test_systemd_unit():
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str
    unit.read_string((DEPLOY / "systemd/llmux.service").read_text())
    svc = unit["Service"]
    assert svc["EnvironmentFile"] == "/etc/llmux/llmux.env"
    assert svc["ExecReload"] == "/bin/kill -HUP $MAINPID"
    assert svc["Restart"] == "on-failure"
    assert int(svc["LimitNOFILE"]) >= 65536
    assert svc.get("DynamicUser") == "yes" or svc.get("User") == "llmux"
    for k in ("NoNewPrivileges", "ProtectSystem", "ProtectHome", "PrivateTmp"):
        assert k in svc, k
    assert unit["Install"]["WantedBy"] == "multi-user.target"


def test_promtool_accepts_config_and_rules():
    promtool = need("promtool")
    r = run([promtool, "check", "config", str(PROM_CONFIG)])
    assert r.returncode == 0, r.stdout.decode() + r.stderr.decode()
    assert b"1 rule files found" in r.stdout + r.stderr
    r = run([promtool, "check", "rules", str(PROM_RULES)])
    assert r.returncode == 0, r.stdout.decode() + r.stderr.decode()
    # The unit tests of the rules: each alert fires on the series it is for,
    # and not on a healthy gateway.
    r = run([promtool, "test", "rules", str(PROM_RULES_TEST)])
    assert r.returncode == 0, r.stdout.decode() + r.stderr.decode()


# ---------------------------------------------------------------------------
# Against a running llmux.

def body(stream=False, max_tokens=5, content="hi"):
    return {"model": "m", "messages": [{"role": "user", "content": content}],
            "max_tokens": max_tokens, "stream": stream}


def traffic_round(lx):
    """One round of every kind of traffic. With --max-concurrent 1 the two
    delayed requests overlap, so one of them waits in the queue."""
    statuses = []

    def delayed():
        with lx.new_client() as c:
            statuses.append(c.post(CHAT, json=body(), headers={"x-sim": "delay_ms=500"})
                            .status_code)

    threads = [threading.Thread(target=delayed) for _ in range(2)]
    for t in threads:
        t.start()
        time.sleep(0.05)
    c = lx.client
    for _ in range(6):
        statuses.append(c.post(CHAT, json=body()).status_code)
    for _ in range(3):
        with c.stream("POST", CHAT, json=body(stream=True)) as r:
            data = r.read()
            statuses.append(r.status_code)
            assert b"data: [DONE]" in data, data[-300:]
    # Errors: one passed through from a node, one refused by llmux itself.
    r = c.post(CHAT, json=body(), headers={"x-sim": "status=400"})
    assert r.status_code == 400, r.text
    r = c.post(CHAT, content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 400, r.text
    for t in threads:
        t.join(T(30))
        assert not t.is_alive()
    assert statuses == [200] * len(statuses) and len(statuses) == 11, statuses


def scrape(lx):
    r = lx.client.get("/metrics")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain")
    return r.content


def metric_sum(text, name):
    total = 0.0
    for line in text.decode().splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            total += float(line.rsplit(" ", 1)[1])
    return total


@pytest.fixture
def gateway(procs, closed_port):
    """llmux in front of two sims and a closed port (connect errors, retries),
    one request at a time (so requests queue)."""
    s1 = procs.sim(model=None)
    s2 = procs.sim(model=None)
    dead = "http://127.0.0.1:%d" % closed_port
    lx = procs.llmux(nodes=[s1, s2, dead], args=[
        "--max-concurrent", "1", "--metrics-update-interval", "1",
        "--strategy", "round_robin",
        # The dead node stays in the rotation, so every round hits it.
        "--health-check-interval", "60", "--health-failure-threshold", "100",
        "--eject-cooldown", "0"])
    lx.dead = dead
    return lx


def test_promtool_check_metrics(gateway):
    promtool = need("promtool")
    traffic_round(gateway)
    text = scrape(gateway)
    for family in ("llmux_upstream_errors_total", "llmux_time_to_first_token_seconds_bucket",
                   "llmux_queue_wait_seconds_count", "llmux_tokens_per_second_bucket"):
        assert metric_sum(text, family) > 0, family
    # The retry budget's, hedges' and resumes' series exist before any event.
    for series in ("llmux_retries_refused_total ", 'llmux_hedges_total{outcome="started"} ',
                   'llmux_hedges_total{outcome="won"} ', 'llmux_hedges_total{outcome="lost"} ',
                   'llmux_stream_resumes_total{outcome="resumed"} ',
                   'llmux_stream_resumes_total{outcome="failed"} '):
        assert "\n" + series in text.decode(), series
    r = run([promtool, "check", "metrics"], stdin=text)
    assert r.returncode == 0, r.stdout.decode() + r.stderr.decode()
    assert not (r.stdout + r.stderr).strip(), r.stdout.decode() + r.stderr.decode()


class Prometheus:
    def __init__(self, binary, config, workdir, port):
        self.url = "http://127.0.0.1:%d" % port
        self.log = workdir / "prometheus.log"
        with open(self.log, "wb") as log:
            self.p = subprocess.Popen(
                [binary, "--config.file=%s" % config,
                 "--storage.tsdb.path=%s" % (workdir / "tsdb"),
                 "--web.listen-address=127.0.0.1:%d" % port,
                 "--storage.tsdb.retention.time=1h", "--log.level=warn"],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log, cwd=str(workdir),
                env=clean_env())
        self.client = httpx.Client(base_url=self.url, timeout=T(10), trust_env=False)

    def output(self):
        return self.log.read_text(errors="replace")[-4000:]

    def ready(self):
        assert self.p.poll() is None, "prometheus exited %s:\n%s" % (self.p.returncode,
                                                                      self.output())
        try:
            return self.client.get("/-/ready").status_code == 200
        except httpx.TransportError:
            return False

    def query(self, expr):
        r = self.client.post("/api/v1/query", data={"query": expr})
        assert r.status_code == 200, "%s: %s" % (expr, r.text)
        js = r.json()
        assert js["status"] == "success", (expr, js)
        return js["data"]["result"]

    def stop(self):
        self.client.close()
        if self.p.poll() is None:
            self.p.terminate()
            try:
                self.p.wait(timeout=T(10))
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait(timeout=T(10))


def test_dashboard_queries_return_data(gateway, tmp_path):
    prometheus = need("prometheus")
    lx = gateway

    # The shipped config, pointed at this llmux and scraping every second.
    cfg = PROM_CONFIG.read_text()
    for old, new in (('"localhost:8000"', '"127.0.0.1:%d"' % lx.port),
                     ("scrape_interval: 5s", "scrape_interval: 1s"),
                     ("evaluation_interval: 5s", "evaluation_interval: 1s"),
                     ("scrape_timeout: 5s", "scrape_timeout: 1s")):
        assert old in cfg, "%s no longer in %s" % (old, PROM_CONFIG)
        cfg = cfg.replace(old, new)
    workdir = tmp_path / "prom"
    workdir.mkdir()
    (workdir / "prometheus.yml").write_text(cfg)
    shutil.copy(PROM_RULES, workdir / "alerts.yml")

    prom = Prometheus(prometheus, workdir / "prometheus.yml", workdir, free_port())
    try:
        wait_for(prom.ready, T(20), interval=0.1, what="prometheus ready")
        wait_for(lambda: [s for s in prom.query('up{job="llmux"}') if s["value"][1] == "1"],
                 T(15), interval=0.2, what='up{job="llmux"} == 1')

        # Two rounds a few scrapes apart: series born in the first round
        # (node failures, TTFT...) have a sample before the second one's
        # increase, so rate() over the window sees it.
        traffic_round(lx)
        time.sleep(2.5)
        traffic_round(lx)
        expected = metric_sum(scrape(lx), "llmux_requests_total")

        def scraped_all():
            res = prom.query("sum(llmux_requests_total)")
            return res and float(res[0]["value"][1]) >= expected
        wait_for(scraped_all, T(15), interval=0.2, what="prometheus scraped the traffic")
        time.sleep(1.5)  # one more sample after the last increase

        # The template variables' queries find the values they offer.
        r = prom.client.get("/api/v1/label/model/values",
                            params={"match[]": "llmux_requests_total"}).json()
        assert "m" in r["data"], r
        r = prom.client.get("/api/v1/label/node/values",
                            params={"match[]": "llmux_node_healthy"}).json()
        assert lx.dead in r["data"] and len(r["data"]) == 3, r

        dash = load_dashboard()
        broken = []
        checked = 0
        for title, ref, expr in panel_exprs(dash):
            for model in (".*", "m"):
                if model == "m" and "$model" not in expr:
                    continue
                q = substitute(expr, model=model)
                res = prom.query(q)
                checked += 1
                values = [float(s["value"][1]) for s in res]
                if not res:
                    broken.append("%s [%s] model=%s: no data: %s" % (title, ref, model, q))
                elif not any(math.isfinite(v) for v in values):
                    broken.append("%s [%s] model=%s: only %r: %s" % (title, ref, model,
                                                                      values, q))
        assert not broken, "dashboard panels without data:\n" + "\n".join(broken)
        assert checked >= 35

        # A few values the traffic must show.
        def one(expr):
            res = prom.query(expr)
            assert len(res) == 1, (expr, res)
            return float(res[0]["value"][1])
        assert one("sum(increase(llmux_upstream_errors_total{kind=\"connect\"}[%s]))"
                   % RATE_WINDOW) > 0
        assert one("sum(increase(llmux_retries_total[%s]))" % RATE_WINDOW) > 0
        assert one("sum(increase(llmux_queue_wait_seconds_count[%s]))" % RATE_WINDOW) > 0
        assert one('sum(increase(llmux_endpoint_requests_total{endpoint="%s",'
                   'status_class="2xx"}[%s]))' % (CHAT, RATE_WINDOW)) > 0
        assert one("max(llmux_queue_capacity)") == 1024
        assert one("max(llmux_max_concurrent_requests)") == 1

        # The alert rules load and evaluate without error on real series.
        def rules_evaluated():
            groups = prom.client.get("/api/v1/rules").json()["data"]["groups"]
            rules = [r for g in groups for r in g["rules"]]
            return rules if rules and all(r["health"] != "unknown" for r in rules) else None
        rules = wait_for(rules_evaluated, T(10), interval=0.2, what="rules evaluated")
        bad = [(r["name"], r["health"], r.get("lastError")) for r in rules if r["health"] != "ok"]
        assert not bad, bad
        assert {r["name"] for r in rules} >= {"LlmuxNoHealthyNode", "LlmuxHighErrorRate",
                                             "LlmuxQueueNearFull", "LlmuxEndpointHighErrorRate",
                                             "LlmuxRetryBudgetExhausted",
                                             "LlmuxStreamResumesFailing"}
    finally:
        prom.stop()
