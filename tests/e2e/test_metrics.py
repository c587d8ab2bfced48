"""
GET /metrics on a fresh gateway and under hostile label values:

- the first scrape, before any traffic, already has every series the shipped
  Grafana dashboard and alert rules select (each selector, with its label
  matchers, matches a sample), so no panel says "No data" and every rate()
  alert evaluates on a healthy gateway;
- the series known at start follow the registry across a reload (a new
  node's appear at 0, a removed node's zero series go);
- model names that clients send to a catch-all pool are bounded: 10,000
  distinct names leave the same series as a few hundred, the rest count
  under "other"; names with quotes, backslashes or escapes are escaped so the
  exposition stays valid (promtool, when installed);
- requests count by endpoint (llmux_endpoint_requests_total), over the fixed
  endpoint table, whatever answered them;
- per node: time to first token and inter-token latency of streams, and the
  node latency split by stream="true|false";
- a node listed in two pools is one series per pool in the gauges (labels pool
  and node; healthy is 1 in each, never 2);
- the nodes' prefix-cache counters, scraped, mirror the node's own.
"""
import json
import re
import shutil
import signal
import subprocess
import threading

import pytest
import yaml

from conftest import REPO, T, clean_env
from e2e_util import chat_body, wait_for

DASHBOARD = REPO / "deploy" / "grafana" / "llmux-dashboard.json"
RULES = REPO / "deploy" / "prometheus" / "alerts.yml"
CHAT = "/v1/chat/completions"

# Gauges and counters read from the nodes' own /metrics: unknown until the
# first scrape of the node succeeded (METRICS_UPDATE_INTERVAL_SECONDS), and a
# 0 would be a lie, so they have no sample before it. Checked once the nodes
# were scraped.
SCRAPED_FROM_NODES = {"llmux_node_kv_cache_usage", "llmux_node_requests_waiting",
                      "llmux_node_prefix_cache_queries_total",
                      "llmux_node_prefix_cache_hits_total"}

# The endpoint label values: the table in src/http/api.h, and "other".
ENDPOINTS = ["/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/rerank",
             "/v1/score", "/v1/responses", "/v1/audio/transcriptions",
             "/v1/audio/translations", "/tokenize", "/detokenize", "/pooling", "/classify",
             "/v1/models", "other"]

SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$')
LABEL = re.compile(r'\s*([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"\s*,?')
MATCHER = re.compile(r'\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"\s*,?')
SELECTOR = re.compile(r'\b(llmux_[a-zA-Z0-9_]+)\s*(\{[^}]*\})?')


def unescape(v):
    return re.sub(r'\\(.)', lambda m: "\n" if m.group(1) == "n" else m.group(1), v)


def parse(text):
    """[(name, {label: value}, value)] of every sample of an exposition."""
    out = []
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = SAMPLE.match(line)
        assert m, "not a sample line: %r" % line
        labels, rest = {}, m.group(2) or ""
        while rest:
            lm = LABEL.match(rest)
            assert lm, "bad labels in %r" % line
            labels[lm.group(1)] = unescape(lm.group(2))
            rest = rest[lm.end():]
        out.append((m.group(1), labels, float(m.group(3))))
    return out


def families(text):
    """{name: type} from the # TYPE lines."""
    return dict(re.findall(r"^# TYPE (\S+) (\S+)$", text, re.M))


def selectors(expr):
    """[(metric, [(label, op, value)])] of every llmux_* selector of a PromQL
    expression, with the dashboard's variables set to All."""
    # $instance is Prometheus's target label, absent from llmux's own
    # exposition: ".*" matches the empty value, as Prometheus does.
    for k, v in (("${model}", ".*"), ("$model", ".*"), ("${node}", ".*"), ("$node", ".*"),
                 ("${instance}", ".*"), ("$instance", ".*")):
        expr = expr.replace(k, v)
    out = []
    for m in SELECTOR.finditer(expr):
        matchers, rest = [], (m.group(2) or "{}")[1:-1]
        while rest.strip():
            mm = MATCHER.match(rest)
            assert mm, "cannot read matchers %r in %r" % (rest, expr)
            matchers.append((mm.group(1), mm.group(2), unescape(mm.group(3))))
            rest = rest[mm.end():]
        out.append((m.group(1), matchers))
    return out


def matches(labels, matchers):
    for name, op, want in matchers:
        have = labels.get(name, "")
        if op == "=" and have != want:
            return False
        if op == "!=" and have == want:
            return False
        if op == "=~" and not re.fullmatch(want, have):
            return False
        if op == "!~" and re.fullmatch(want, have):
            return False
    return True


def shipped_queries():
    """[(where, expr)]: every query of every dashboard panel and variable,
    and every alert rule's expression."""
    dash = json.loads(DASHBOARD.read_text())
    out = []
    panels = []
    for p in dash["panels"]:
        panels.append(p)
        panels.extend(p.get("panels", []))
    for p in panels:
        for t in p.get("targets", []):
            out.append(("panel %r" % p["title"], t["expr"]))
    for v in dash["templating"]["list"]:
        q = v.get("query")
        if isinstance(q, dict) and q.get("query", "").startswith("label_values("):
            metric = q["query"][len("label_values("):].split(",")[0].strip()
            out.append(("variable %r" % v["name"], metric))
    for g in yaml.safe_load(RULES.read_text())["groups"]:
        for r in g["rules"]:
            out.append(("alert %r" % r.get("alert", r.get("record")), r["expr"]))
    return out


def unmatched(text, skip=()):
    """The shipped selectors that no sample of <text> matches."""
    samples = parse(text)
    missing = []
    for where, expr in shipped_queries():
        for metric, matchers in selectors(expr):
            if metric in skip:
                continue
            if not any(n == metric and matches(l, matchers) for n, l, _ in samples):
                missing.append("%s: %s%s" % (where, metric, matchers or ""))
    return missing


def write_config(tmp_path, models, name="llmux.json"):
    cfg = tmp_path / name
    cfg.write_text(json.dumps({"models": models}))
    return cfg


def test_selectors_are_read():
    """The parser above sees what the shipped files select (or the strong
    test below would pass vacuously)."""
    names = {m for _, e in shipped_queries() for m, _ in selectors(e)}
    for want in ("llmux_requests_total", "llmux_queue_wait_seconds_bucket",
                 "llmux_tokens_per_second_bucket", "llmux_node_failures_total",
                 "llmux_upstream_errors_total", "llmux_requests_rejected_total",
                 "llmux_endpoint_requests_total", "llmux_retries_refused_total",
                 "llmux_hedges_total", "llmux_stream_resumes_total", "llmux_node_healthy",
                 "llmux_node_time_to_first_token_seconds_bucket",
                 "llmux_node_inter_token_latency_seconds_bucket",
                 "llmux_node_prefix_cache_hits_total", "llmux_node_prefix_cache_queries_total"):
        assert want in names, want
    sel = selectors('sum(rate(llmux_requests_total{model=~"$model",status=~"5.."}[5m]))')
    assert sel == [("llmux_requests_total", [("model", "=~", ".*"), ("status", "=~", "5..")])]


def test_first_scrape_has_every_series_the_dashboard_and_rules_query(procs, tmp_path):
    """Two pools (chat on two nodes, embeddings on a third): the very first
    scrape matches every selector of the dashboard and the alert rules."""
    s1, s2, s3 = procs.sim(model=None), procs.sim(model=None), procs.sim(model=None)
    cfg = write_config(tmp_path, {"chat": {"servers": [s1.url, s2.url]},
                                  "emb": {"servers": [{"url": s3.url, "name": "emb-node"}]}})
    lx = procs.llmux(args=["--config", str(cfg), "--metrics-update-interval", "0.5"])
    r = lx.client.get("/metrics")
    assert r.status_code == 200
    text = r.text
    missing = unmatched(text, skip=SCRAPED_FROM_NODES)
    assert not missing, "not in the first scrape:\n" + "\n".join(missing)

    samples = parse(text)
    nodes = {s1.url, s2.url, "emb-node"}
    for fam in ("llmux_requests_per_node_total", "llmux_node_failures_total",
                "llmux_node_latency_seconds_count"):
        assert {l["node"] for n, l, _ in samples if n == fam} == nodes, fam
    kinds = {(l["node"], l["kind"]) for n, l, _ in samples if n == "llmux_upstream_errors_total"}
    assert kinds == {(n, k) for n in nodes
                     for k in ("connect", "timeout", "status_5xx", "protocol", "stream_broken")}
    for fam in ("llmux_requests_total", "llmux_tokens_total",
                "llmux_request_latency_seconds_count", "llmux_time_to_first_token_seconds_count",
                "llmux_tokens_per_second_count"):
        assert {l["model"] for n, l, _ in samples if n == fam} == {"chat", "emb"}, fam
    assert {l["endpoint"] for n, l, _ in samples
            if n == "llmux_endpoint_requests_total"} == set(ENDPOINTS)
    # Nothing has happened: every counter and histogram is 0.
    types = families(text)
    for n, l, v in samples:
        base = re.sub(r"_(bucket|sum|count)$", "", n)
        if types.get(n) == "counter" or types.get(base) == "histogram":
            assert v == 0, (n, l, v)
    print("first scrape of a 2-pool, 3-node gateway: %d samples, %d series "
          "(histograms counted once)" % (len(samples), len({
              (re.sub(r"_(bucket|sum|count)$", "", n) if types.get(
                  re.sub(r"_(bucket|sum|count)$", "", n)) == "histogram" else n,
               tuple(sorted((k, v) for k, v in l.items() if k != "le")))
              for n, l, _ in samples})))

    # The gauges scraped from the nodes come with the first node scrape.
    wait_for(lambda: not unmatched(lx.client.get("/metrics").text), T(10), interval=0.1,
             what="the nodes' scraped gauges")


def test_known_series_follow_a_reload(procs, tmp_path):
    """A reload that removes a node and adds another: the new node's series
    appear at 0, the removed node's zero series go, its counted ones stay."""
    s1, s2, s3 = procs.sim(model=None), procs.sim(model=None), procs.sim(model=None)
    cfg = write_config(tmp_path, {"chat": {"servers": [{"url": s1.url, "name": "a"},
                                                       {"url": s2.url, "name": "b"}]}})
    lx = procs.llmux(args=["--config", str(cfg)])
    r = lx.client.post(CHAT, json=chat_body(model="chat", max_tokens=2))
    assert r.status_code == 200, r.text
    used = r.headers["x-routed-node"]
    unused = ({"a", "b"} - {used}).pop()

    def nodes_of(fam):
        return {l["node"]: v for n, l, v in parse(lx.client.get("/metrics").text) if n == fam}
    assert nodes_of("llmux_requests_per_node_total") == {used: 1, unused: 0}

    write_config(tmp_path, {"chat2": {"servers": [{"url": s3.url, "name": "c"}]}})
    before = lx.output_bytes().count(b"configuration reloaded")
    lx.signal(signal.SIGHUP)
    wait_for(lambda: lx.output_bytes().count(b"configuration reloaded") > before, T(10),
             interval=0.01, what="reload")
    # Every worker has the new snapshot once a request on it sees chat2;
    # scrapes land on any worker, so wait until they agree.
    want = {used: 1, "c": 0}
    wait_for(lambda: nodes_of("llmux_requests_per_node_total") == want, T(10), interval=0.05,
             what="per-node series of the new registry")
    text = lx.client.get("/metrics").text
    samples = parse(text)
    assert {l["node"] for n, l, _ in samples if n == "llmux_node_failures_total"} == {"c"}
    models = {l["model"] for n, l, _ in samples if n == "llmux_requests_total"}
    assert models == {"chat", "chat2"}, models  # chat's counted 200 stays
    assert {l["status"] for n, l, _ in samples
            if n == "llmux_requests_total" and l["model"] == "chat"} == {"200"}


def promtool_check(text):
    promtool = shutil.which("promtool")
    if not promtool:
        return
    r = subprocess.run([promtool, "check", "metrics"], input=text.encode(),
                       capture_output=True, timeout=T(30), env=clean_env())
    assert r.returncode == 0, (r.stdout + r.stderr).decode()
    assert not (r.stdout + r.stderr).strip(), (r.stdout + r.stderr).decode()


def test_client_model_names_are_bounded(procs, tmp_path):
    """A catch-all pool and 10,000 distinct model names: at most 64 names
    become label values (the first seen), the rest count under "other"; the
    series after 10,000 names are the series after 300. Names with quotes,
    backslashes, JSON escapes, control characters or invalid UTF-8 never
    break the exposition."""
    sim = procs.sim(model=None, fast=True)
    cfg = write_config(tmp_path, {"*": {"servers": [sim.url]}})
    lx = procs.llmux(args=["--config", str(cfg)], workers=2)

    hostile = [b'qu\\"ote', b'back\\\\slash', b'new\\nline', b'tab\\tx', b'sur\\ud800',
               b'caf\xc3\xa9', b'bad\xff\xfe', b'half\xe2\x82', b'{"nested": 1}']
    with lx.new_client() as c:
        for name in hostile:
            body = (b'{"model": "' + name + b'", "messages": [{"role": "user", '
                    b'"content": "x"}], "max_tokens": 1}')
            r = c.post(CHAT, content=body, headers={"content-type": "application/json"})
            assert r.status_code in (200, 400), (name, r.status_code, r.text)
    first = lx.client.get("/metrics").text
    promtool_check(first)
    parse(first)

    def send(names):
        def worker(part):
            with lx.new_client() as c:
                for n in part:
                    r = c.post(CHAT, json=chat_body(model=n, max_tokens=1))
                    assert r.status_code == 200, r.text
        threads = [threading.Thread(target=worker, args=(names[i::4],)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(T(300))
            assert not t.is_alive()

    def series(text):
        return {(n, tuple(sorted(l.items()))) for n, l, _ in parse(text)
                if not n.startswith(("llmux_uptime", "llmux_node_"))}

    names = ["client-model-%05d" % i for i in range(10000)]
    send(names[:300])
    after_300 = lx.client.get("/metrics").text
    send(names[300:])
    after_10k = lx.client.get("/metrics").text
    promtool_check(after_10k)

    assert series(after_10k) == series(after_300)
    samples = parse(after_10k)
    models = {l["model"] for n, l, _ in samples if n == "llmux_requests_total"}
    assert "other" in models
    assert len(models - {"other", ""}) <= 64, len(models)
    assert len(samples) < 64 * 50 + 1000, len(samples)
    total = sum(v for n, l, v in samples if n == "llmux_requests_total")
    assert total == 10000 + len(hostile)
    # The quoted and backslashed names, if they got a slot, read back as sent.
    for m in models:
        assert "\n" not in m and "\t" not in m, repr(m)


def endpoint_counts(lx):
    out = {}
    for n, l, v in parse(lx.client.get("/metrics").text):
        if n == "llmux_endpoint_requests_total":
            out[(l["endpoint"], l["status_class"])] = v
    return out


def test_requests_by_endpoint(procs, tmp_path):
    """Each request counts once under its endpoint and status class, the
    query string ignored, unknown paths under "other"."""
    sim = procs.sim(model=None, fast=True)
    cfg = write_config(tmp_path, {"m": {"servers": [sim.url]}})
    lx = procs.llmux(args=["--config", str(cfg)])
    before = endpoint_counts(lx)
    assert set(before) == {(e, c) for e in ENDPOINTS for c in ("2xx", "4xx", "5xx")}
    assert not any(before.values())

    c = lx.client
    assert c.post(CHAT, json=chat_body(model="m", max_tokens=1)).status_code == 200
    assert c.post(CHAT + "?x=1", json=chat_body(model="m", max_tokens=1)).status_code == 200
    assert c.post(CHAT, json=chat_body(model="nope")).status_code == 404
    assert c.post("/v1/completions", json={"model": "m", "prompt": "x",
                                           "max_tokens": 1}).status_code == 200
    assert c.get("/v1/models").status_code == 200
    assert c.get("/no/such/path").status_code == 404
    emb = c.post("/v1/embeddings", json={"model": "m", "input": "x"})
    after = endpoint_counts(lx)
    delta = {k: after[k] - before.get(k, 0) for k in after if after[k] != before.get(k, 0)}
    emb_key = ("/v1/embeddings", "%dxx" % (emb.status_code // 100))
    assert delta == {("/v1/chat/completions", "2xx"): 2, ("/v1/chat/completions", "4xx"): 1,
                     ("/v1/completions", "2xx"): 1, ("/v1/models", "2xx"): 1,
                     ("other", "4xx"): 1, emb_key: 1}, delta


def test_node_in_two_pools_is_one_series_per_pool(procs, tmp_path):
    """The gauges of a node listed in two pools: one series per (pool, node),
    healthy 1 in each (never 2), its state one-hot in each."""
    s1 = procs.sim(model=None)
    cfg = write_config(tmp_path, {"a": {"servers": [{"url": s1.url, "name": "shared"}]},
                                  "b": {"servers": [{"url": s1.url, "name": "shared"}]}})
    lx = procs.llmux(args=["--config", str(cfg), "--metrics-update-interval", "0.5"])

    def gauges():
        return {(n, l.get("pool")): v for n, l, v in parse(lx.client.get("/metrics").text)
                if l.get("node") == "shared" and n in ("llmux_node_healthy",
                                                       "llmux_node_requests_waiting",
                                                       "llmux_node_kv_cache_usage")}
    g = wait_for(lambda: (lambda g: g if len(g) == 6 else None)(gauges()), T(10), interval=0.1,
                 what="the shared node's gauges")
    for pool in ("a", "b"):
        assert g[("llmux_node_healthy", pool)] == 1
        assert 0 <= g[("llmux_node_kv_cache_usage", pool)] <= 1
    states = [(l["pool"], l["state"]) for n, l, v in parse(lx.client.get("/metrics").text)
              if n == "llmux_node_state" and l["node"] == "shared" and v == 1]
    assert sorted(states) == [("a", "healthy"), ("b", "healthy")]


def test_node_ttft_itl_and_latency_by_stream(procs, tmp_path):
    """Per node: time to first token and inter-token latency of a stream,
    and the node latency apart for streamed and whole answers."""
    sim = procs.sim(model=None, decode_ms=20)
    cfg = write_config(tmp_path, {"m": {"servers": [{"url": sim.url, "name": "gpu0"}]}})
    lx = procs.llmux(args=["--config", str(cfg)])

    def node_samples():
        return {(n, l.get("stream")): v for n, l, v in parse(lx.client.get("/metrics").text)
                if l.get("node") == "gpu0" and n.endswith(("_sum", "_count"))}
    before = node_samples()
    assert before[("llmux_node_time_to_first_token_seconds_count", None)] == 0
    assert before[("llmux_node_inter_token_latency_seconds_count", None)] == 0
    assert before[("llmux_node_latency_seconds_count", "true")] == 0
    assert before[("llmux_node_latency_seconds_count", "false")] == 0
    with lx.new_client() as c:
        r = c.post(CHAT, json=chat_body(model="m", max_tokens=50, stream=True),
                   headers={"x-sim": "ttft_ms=200,tokens=10"})
        assert r.status_code == 200 and "[DONE]" in r.text, r.text
        r = c.post(CHAT, json=chat_body(model="m", max_tokens=5))
        assert r.status_code == 200, r.text
    g = node_samples()
    assert g[("llmux_node_latency_seconds_count", "true")] == 1
    assert g[("llmux_node_latency_seconds_count", "false")] == 1
    assert g[("llmux_node_time_to_first_token_seconds_count", None)] == 1
    assert 0.2 <= g[("llmux_node_time_to_first_token_seconds_sum", None)] < 5
    # The token events after the first, 20 ms of decode apart: their gaps add
    # up to the ~0.2 s after the first token.
    n_itl = g[("llmux_node_inter_token_latency_seconds_count", None)]
    itl_sum = g[("llmux_node_inter_token_latency_seconds_sum", None)]
    assert 9 <= n_itl <= 14, g
    assert 0.1 <= itl_sum < 3, g
    # A whole answer's head comes after its generation, a stream's before it.
    assert g[("llmux_node_latency_seconds_sum", "true")] < \
        g[("llmux_node_time_to_first_token_seconds_sum", None)]


def test_node_prefix_cache_counters_mirror_the_node(procs, tmp_path):
    """llmux_node_prefix_cache_{queries,hits}_total{pool,node}: counters, the
    node's own vllm:prefix_cache_*_total as last scraped."""
    sim = procs.sim(model=None)
    cfg = write_config(tmp_path, {"m": {"servers": [{"url": sim.url, "name": "gpu0"}]}})
    lx = procs.llmux(args=["--config", str(cfg), "--metrics-update-interval", "0.2"])
    system = "You are a helpful assistant. " * 40
    for i in range(4):
        r = lx.client.post(CHAT, json={"model": "m", "max_tokens": 4, "messages": [
            {"role": "system", "content": system}, {"role": "user", "content": "q %d" % i}]})
        assert r.status_code == 200, r.text

    def node_own():
        want = {}
        for n, l, v in parse(sim.client.get("/metrics").text):
            if n in ("vllm:prefix_cache_queries_total", "vllm:prefix_cache_hits_total"):
                want[n] = want.get(n, 0) + v
        return want

    want = node_own()
    assert want["vllm:prefix_cache_queries_total"] > 0, want

    def mirrored():
        text = lx.client.get("/metrics").text
        got = {(n, l["pool"], l["node"]): v for n, l, v in parse(text)
               if n.startswith("llmux_node_prefix_cache_")}
        return (text, got) if got == {
            ("llmux_node_prefix_cache_queries_total", "m", "gpu0"):
                want["vllm:prefix_cache_queries_total"],
            ("llmux_node_prefix_cache_hits_total", "m", "gpu0"):
                want["vllm:prefix_cache_hits_total"]} else None
    text, _ = wait_for(mirrored, T(10), interval=0.1, what="the node's prefix-cache counters")
    types = families(text)
    assert types["llmux_node_prefix_cache_queries_total"] == "counter"
    assert types["llmux_node_prefix_cache_hits_total"] == "counter"
    # The same system prompt again: the node found part of it in its cache.
    assert want["vllm:prefix_cache_hits_total"] > 0, want
