"""
SIGHUP reload with --config FILE: new pools and servers apply to new
requests, a stream in flight finishes on the configuration it started with,
an invalid file is refused (the running configuration stays, stderr says
"reload refused" and names the key), and unchanged nodes keep their state.
docs/ROUTING.md ("Reload") is the reference.
"""
import json
import signal
import threading
import time
from collections import Counter

import pytest

from conftest import T
from e2e_util import chat_body, iter_sse, wait_for

CHAT = "/v1/chat/completions"


def write_config(path, models, **settings):
    path.write_text(json.dumps(dict(settings, models=models), indent=2))
    return path


def start(procs, tmp_path, models, env=None, **settings):
    cfg = write_config(tmp_path / "llmux.json", models, **settings)
    return procs.llmux(args=["--config", str(cfg)], env=env), cfg


def log_count(lx, text):
    return lx.output_bytes().count(text.encode())


def reload(lx, expect="configuration reloaded"):
    """SIGHUP, then waits for the log line that says how it went."""
    before = log_count(lx, expect)
    lx.signal(signal.SIGHUP)
    wait_for(lambda: log_count(lx, expect) > before, T(10), interval=0.01,
             what="%r in llmux's log" % expect)


def chat(client, model, **kw):
    return client.post(CHAT, json=chat_body(model=model, max_tokens=2), **kw)


def fresh_chat(lx, model):
    """A request on a new connection (which may land on any worker)."""
    with lx.new_client() as c:
        return chat(c, model)


def routed(lx, model, n):
    out = Counter()
    with lx.new_client() as c:
        for _ in range(n):
            r = chat(c, model)
            assert r.status_code == 200, r.text
            out[r.headers["x-routed-node"]] += 1
    return out


def pools(lx):
    return {p["model"]: p for p in lx.health()["pools"]}


def test_reload_adds_a_pool_and_changes_servers(procs, tmp_path):
    s1, s2, s3 = (procs.sim(fast=True) for _ in range(3))
    lx, cfg = start(procs, tmp_path, {"a": {"servers": [{"url": s1.url, "name": "n1"}]}})
    assert routed(lx, "a", 4) == {"n1": 4}
    assert chat(lx.client, "b").status_code == 404
    write_config(cfg, {
        "a": {"servers": [{"url": s2.url, "name": "n2"}], "strategy": "least_loaded"},
        "b": {"servers": [s3.url], "upstream_model": "up-b"},
    })
    reload(lx)
    # Every worker switches (both of them may serve these).
    wait_for(lambda: all(fresh_chat(lx, "b").status_code == 200 for _ in range(4)),
             T(10), what="pool b on every worker")
    assert routed(lx, "a", 20) == {"n2": 20}
    r = chat(lx.client, "b")
    assert r.headers["x-routed-node"] == s3.url
    assert r.json()["model"] == "up-b"  # the new pool's upstream_model
    p = pools(lx)
    assert set(p) == {"a", "b"}
    assert p["a"]["strategy"] == "least_loaded"
    assert [n["name"] for n in p["a"]["nodes"]] == ["n2"]
    ids = {m["id"] for m in lx.client.get("/v1/models").json()["data"]}
    assert ids == {"a", "b"}, ids
    assert s1.stats()["requests_total"] == 4  # the removed node gets nothing new
    assert log_count(lx, "reload refused") == 0


def test_stream_in_flight_during_reload_completes(procs, tmp_path):
    s1 = procs.sim(decode_ms=25)
    s2 = procs.sim(fast=True)
    lx, cfg = start(procs, tmp_path, {"a": {"servers": [{"url": s1.url, "name": "old"}]}})
    tokens = 120  # ~3 s of stream
    with lx.new_client(timeout=T(60)) as c:
        with c.stream("POST", CHAT, json=chat_body(model="a", stream=True,
                                                   max_tokens=tokens)) as r:
            assert r.status_code == 200 and r.headers["x-routed-node"] == "old"
            events = iter_sse(r)
            first = next(events)
            write_config(cfg, {"a": {"servers": [{"url": s2.url, "name": "new"}]}})
            reload(lx)
            wait_for(lambda: fresh_chat(lx, "a").headers["x-routed-node"] == "new",
                     T(10), what="new requests to go to the new node")
            t_switched = time.monotonic()
            assert routed(lx, "a", 6) == {"new": 6}
            assert [n["name"] for n in pools(lx)["a"]["nodes"]] == ["new"]
            rest = list(events)
    assert rest and rest[-1].done, rest[-3:]
    assert not any(b'"error"' in e.data for e in rest), rest
    # It was still going after the switch, and it lost nothing.
    assert rest[-1].t > t_switched
    content = [e.json()["choices"][0]["delta"].get("content") for e in [first] + rest[:-1]
               if e.json()["choices"]]
    assert sum(1 for x in content if x) == tokens, len(content)
    assert s1.stats()["completed_total"] == 1


@pytest.mark.parametrize("bad, key", [
    ({"max_retry": 1}, "max_retry"),
    ({"models": {"a": {"servers": ["URL2"], "stratgy": "random"}}}, "stratgy"),
    ({"models": {"a": {"servers": [{"url": "URL2", "wieght": 2}]}}}, "wieght"),
    ({"models": {"a": {"servers": ["URL2"], "strategy": "fastest"}}}, "strategy"),
    ({"max_retries": "2"}, "max_retries"),
], ids=["unknown-key", "unknown-pool-key", "unknown-server-key", "bad-strategy", "bad-type"])
def test_invalid_config_is_refused_and_the_old_one_stays(procs, tmp_path, bad, key):
    s1, s2 = procs.sim(fast=True), procs.sim(fast=True)
    models = {"a": {"servers": [{"url": s1.url, "name": "n1"}]}}
    lx, cfg = start(procs, tmp_path, models)
    assert routed(lx, "a", 2) == {"n1": 2}
    text = json.dumps(dict({"models": {"a": {"servers": [s2.url]}, "b": {"servers": [s2.url]}}},
                           **bad)).replace("URL2", s2.url)
    cfg.write_text(text)
    reload(lx, expect="reload refused")
    line = [x for x in lx.output_bytes().decode("utf-8", "replace").splitlines()
            if "reload refused" in x][-1]
    assert key in line, line
    assert log_count(lx, "configuration reloaded") == 0
    # Still the old pools, on every worker, and still alive.
    assert routed(lx, "a", 10) == {"n1": 10}
    assert chat(lx.client, "b").status_code == 404
    assert set(pools(lx)) == {"a"}
    assert lx.alive()
    # A good file afterwards applies.
    write_config(cfg, {"a": {"servers": [{"url": s2.url, "name": "n2"}]}})
    reload(lx)
    wait_for(lambda: all(fresh_chat(lx, "a").headers["x-routed-node"] == "n2"
                         for _ in range(4)), T(10), what="the good reload")


def test_unchanged_nodes_keep_their_state_across_reload(procs, tmp_path):
    bad, good = procs.sim(fast=True, error_rate=1), procs.sim(fast=True)
    servers = [{"url": bad.url, "name": "bad"}, {"url": good.url, "name": "good"}]
    env = {"HEALTH_CHECK_INTERVAL_SECONDS": "60", "EJECT_COOLDOWN_SECONDS": "60",
           "HEALTH_FAILURE_THRESHOLD": "3"}
    lx, cfg = start(procs, tmp_path, {"a": {"servers": servers, "strategy": "round_robin"}},
                    env=env)
    assert routed(lx, "a", 10) == {"good": 10}
    st = pools(lx)["a"]["nodes"]
    assert [n["state"] for n in st] == ["ejected", "healthy"], st
    good_total = st[1]["requests_total"]
    assert good_total == 10

    # Same nodes, one more pool: the ejected node stays ejected (state kept).
    write_config(cfg, {"a": {"servers": servers, "strategy": "round_robin"},
                       "b": {"servers": [good.url]}})
    reload(lx)
    wait_for(lambda: "b" in pools(lx), T(10), what="pool b")
    st = pools(lx)["a"]["nodes"]
    assert [n["state"] for n in st] == ["ejected", "healthy"], st
    assert st[1]["requests_total"] == good_total
    assert routed(lx, "a", 6) == {"good": 6}
    assert bad.stats()["requests_total"] == 3

    # A changed weight makes it a new node: fresh state, traffic again.
    changed = [dict(servers[0], weight=2), servers[1]]
    write_config(cfg, {"a": {"servers": changed, "strategy": "round_robin"}})
    reload(lx)
    wait_for(lambda: pools(lx)["a"]["nodes"][0]["state"] != "ejected", T(10),
             what="the re-created node")
    assert routed(lx, "a", 6) == {"good": 6}  # each retried on good when it went to bad
    assert bad.stats()["requests_total"] > 3


def test_request_parked_after_reload_goes_when_an_older_request_frees_the_node(procs, tmp_path):
    """A node kept by a reload is the same node (same in-flight count). A
    request that parks for its max_concurrency after the reload must go as
    soon as the node has room, even when the request that frees it started
    before the reload."""
    sim = procs.sim()
    servers = [{"url": sim.url, "name": "only", "max_concurrency": 1}]
    qt = T(3)
    lx, cfg = start(procs, tmp_path, {"a": {"servers": servers}}, queue_timeout_seconds=qt)
    hold_ms = int(T(1.0) * 1000)
    results = {}

    def call(name, hdr):
        with lx.new_client(timeout=T(60)) as c:
            t0 = time.monotonic()
            r = c.post(CHAT, json=chat_body(model="a", max_tokens=2), headers=hdr)
            results[name] = (r.status_code, r.text[:200], time.monotonic() - t0)

    first = threading.Thread(target=call, args=("first", {"x-sim": "ttft_ms=%d" % hold_ms}))
    first.start()
    wait_for(lambda: lx.node_stats()["only"]["in_flight"] == 1, T(10), what="the first request")
    # The same pool and node, plus another pool: the node object is kept.
    write_config(cfg, {"a": {"servers": servers}, "b": {"servers": [sim.url]}},
                 queue_timeout_seconds=qt)
    reload(lx)
    wait_for(lambda: all(fresh_chat(lx, "b").status_code == 200 for _ in range(4)), T(10),
             what="pool b on every worker")
    assert lx.node_stats()["only"]["in_flight"] == 1, "the node was not carried over"
    second = threading.Thread(target=call, args=("second", {}))
    second.start()
    wait_for(lambda: lx.client.get("/stats").json()["models"][0]["parked"] == 1 or
             "second" in results, T(10), what="the second request to park")
    first.join(T(30))
    second.join(T(40))
    assert results["first"][0] == 200, results
    # Expected: served as soon as the first one ends (~1 s in), not refused
    # with queue_timeout after QUEUE_TIMEOUT_SECONDS of parking.
    assert results["second"][0] == 200, results


def test_reload_keeps_flags_and_moves_health_checks(procs, tmp_path, closed_port):
    """Flags given at start-up still apply after a reload (the pools take the
    --strategy flag), new nodes are probed (a dead one goes unhealthy) and
    removed ones are no longer probed."""
    s1, s2 = procs.sim(fast=True), procs.sim(fast=True)
    cfg = write_config(tmp_path / "llmux.json", {"a": {"servers": [s1.url]}})
    lx = procs.llmux(args=["--config", str(cfg), "--strategy", "least_loaded"],
                     env={"HEALTH_CHECK_INTERVAL_SECONDS": "0.2",
                          "HEALTH_FAILURE_THRESHOLD": "2"})
    assert pools(lx)["a"]["strategy"] == "least_loaded"
    dead = "http://127.0.0.1:%d" % closed_port
    write_config(cfg, {"a": {"servers": [s2.url]}, "d": {"servers": [dead]}})
    reload(lx)
    wait_for(lambda: "d" in pools(lx), T(10), what="pool d")
    p = pools(lx)
    assert p["a"]["strategy"] == "least_loaded" and p["d"]["strategy"] == "least_loaded", p
    wait_for(lambda: pools(lx)["d"]["nodes"][0]["state"] == "unhealthy", T(5),
             what="the new dead node to be probed unhealthy")
    # s1 is not probed any more: its count of HTTP requests stays still
    # while s2's (probed every 0.2 s) grows.
    time.sleep(0.3)
    a1, a2 = s1.stats()["http_requests_total"], s2.stats()["http_requests_total"]
    wait_for(lambda: s2.stats()["http_requests_total"] >= a2 + 4, T(10),
             what="more probes of the new node")
    assert s1.stats()["http_requests_total"] == a1 + 1  # our own /sim/stats call
