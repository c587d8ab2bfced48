"""
Resilience: failover when a node dies under load, retry limits and the
exclusion of nodes already tried, what is and is not retried, broken streams,
active health checks (a dead node goes unhealthy, comes back with slow
start), passive ejection, every node down, and the stream-idle and total
timeouts. docs/ROUTING.md is the reference.
"""
import concurrent.futures as cf
import json
import re
import threading
import time
from collections import Counter

import httpx
import pytest

from conftest import T
from e2e_nodes import http_response
from e2e_util import (RawConn, assert_openai_error, chat_body, node_error_as_openai, raw_request,
                       read_sse, wait_for)

CHAT = "/v1/chat/completions"
BODY = json.dumps(chat_body(content="resilience", max_tokens=2)).encode()
FAST_HEALTH = {"HEALTH_CHECK_INTERVAL_SECONDS": "0.3", "HEALTH_FAILURE_THRESHOLD": "2"}


def metric(lx, name, **labels):
    """The value of one sample of llmux's /metrics (0 when absent)."""
    text = lx.client.get("/metrics").text
    want = ",".join('%s="%s"' % kv for kv in labels.items())
    for line in text.splitlines():
        m = re.match(r"^([a-z_:]+)(?:\{(.*)\})? (\S+)$", line)
        if m and m.group(1) == name and (m.group(2) or "") == want:
            return float(m.group(3))
    return 0.0


def node_state(lx, name):
    return lx.node_stats()[name]


def sse_head():
    return (b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n")


def chunk(data):
    return b"%x\r\n%s\r\n" % (len(data), data)


# ---- failover ---------------------------------------------------------------------

def test_sigkill_of_a_node_under_load_loses_no_request(procs):
    """560 non-streaming requests from 8 threads; one of three nodes is
    SIGKILLed a quarter of the way in, with requests in flight on it: every
    request still gets its 200 (retried before the first byte)."""
    sims = [procs.sim() for _ in range(3)]  # real decode time: requests overlap the kill
    lx = procs.llmux(sims, env={"MAX_RETRIES": "2"})
    victim = sims[1]
    body = json.dumps(chat_body(content="failover", max_tokens=4)).encode()
    per_thread, threads = 70, 8
    done = Counter()
    lock = threading.Lock()
    quarter = threading.Event()

    def worker(k):
        out = []
        with lx.new_client(timeout=T(60)) as c:
            for i in range(per_thread):
                try:
                    r = c.post(CHAT, content=body)
                    out.append((r.status_code, r.headers.get("x-routed-node"),
                                r.text if r.status_code != 200 else ""))
                except httpx.HTTPError as e:
                    out.append((None, None, repr(e)))
                with lock:
                    done["n"] += 1
                    if done["n"] >= per_thread * threads // 4:
                        quarter.set()
        return out

    with cf.ThreadPoolExecutor(threads) as ex:
        futs = [ex.submit(worker, k) for k in range(threads)]
        assert quarter.wait(T(60)), "the load did not get going"
        victim.kill()
        results = [x for f in futs for x in f.result(timeout=T(120))]
    assert len(results) == per_thread * threads
    bad = [x for x in results if x[0] != 200]
    assert not bad, "%d failed, e.g. %r" % (len(bad), bad[:5])
    n = Counter(node for _, node, _ in results)
    assert n[victim.url] >= 1 and n[sims[0].url] > n[victim.url], n
    assert lx.alive()
    # llmux did run into the dead node (requests in flight, or connects
    # refused before passive ejection), and retried elsewhere.
    assert metric(lx, "llmux_node_failures_total", node=victim.url) >= 1
    assert metric(lx, "llmux_retries_total") >= 1


@pytest.mark.parametrize("retries", [0, 1, 2])
def test_retries_stop_at_max_retries_and_never_repeat_a_node(procs, retries):
    sims = [procs.sim(fast=True, error_rate=1) for _ in range(3)]
    lx = procs.llmux(sims, env={"MAX_RETRIES": str(retries)})
    seen = [0, 0, 0]
    for k in range(2):
        r = lx.client.post(CHAT, content=BODY)
        # The last attempt's answer is relayed as it is.
        assert r.status_code == 500, r.text
        assert r.json()["error"]["message"] == "simulated error (--error-rate)", r.text
        now = [s.stats()["requests_total"] for s in sims]
        delta = [a - b for a, b in zip(now, seen)]
        assert sum(delta) == retries + 1, delta
        assert max(delta) == 1, "a node was tried twice for one request: %r" % delta
        # X-Routed-Node names a node that was tried.
        assert delta[[s.url for s in sims].index(r.headers["x-routed-node"])] == 1
        seen = now
    assert metric(lx, "llmux_retries_total") == 2 * retries
    assert metric(lx, "llmux_requests_total", model="sim-model", status="500") == 2


@pytest.mark.parametrize("status", [400, 404])
def test_client_errors_pass_through_unretried(procs, status):
    sims = [procs.sim(fast=True) for _ in range(3)]
    lx = procs.llmux(sims, env={"MAX_RETRIES": "2"})
    hdr = {"x-sim": "status=%d" % status}
    direct = sims[0].client.post(CHAT, content=BODY, headers=hdr)
    assert direct.status_code == status
    before = sum(s.stats()["requests_total"] for s in sims)
    for stream in (False, True):
        body = json.dumps(chat_body(content="resilience", max_tokens=2, stream=stream)).encode()
        r = lx.client.post(CHAT, content=body if stream else BODY, headers=hdr)
        assert r.status_code == status, r.text
        assert r.json() == node_error_as_openai(direct)
        assert r.headers["content-type"] == "application/json"
    assert sum(s.stats()["requests_total"] for s in sims) == before + 2
    assert metric(lx, "llmux_retries_total") == 0
    # Not the node's fault: nothing counts against it.
    assert all(n["failures_total"] == 0 and n["state"] == "healthy"
               for n in lx.node_stats().values())


def test_429_is_retried_on_another_node_and_does_not_eject(procs):
    def busy(conn, req):
        if req.method == "GET":
            conn.send(http_response(200, b"", reason="OK"))
        else:
            conn.send(http_response(429, b'{"error":"slow down"}', reason="Too Many Requests",
                                    headers=[("Retry-After", "1")]))
        return True
    limited = procs.pynode(busy)
    sim = procs.sim(fast=True)
    lx = procs.llmux([limited, sim], args=["--strategy", "round_robin"],
                     env={"MAX_RETRIES": "1", "HEALTH_FAILURE_THRESHOLD": "2"})
    for i in range(20):
        r = lx.client.post(CHAT, content=BODY)
        assert r.status_code == 200, (i, r.text)
        assert r.headers["x-routed-node"] == sim.url
    assert sim.stats()["requests_total"] == 20
    # It keeps being offered requests well past HEALTH_FAILURE_THRESHOLD: a
    # 429 is the node protecting itself, not a failure, so it is not ejected.
    assert len(limited.posts) >= 8, len(limited.posts)
    st = node_state(lx, limited.url)
    assert st["state"] == "healthy" and st["failures_total"] == 0, st
    assert metric(lx, "llmux_retries_total") == len(limited.posts)


def test_stream_broken_mid_way_ends_with_an_error_event_and_a_clean_end(procs):
    sim = procs.sim(decode_ms=5)
    lx = procs.llmux([sim], env={"MAX_RETRIES": "2"})
    body = json.dumps(chat_body(content="drop", stream=True)).encode()
    c = RawConn(lx.port, timeout=T(20))
    try:
        c.send(raw_request("POST", CHAT, body, headers=[("Content-Type", "application/json"),
                                                        ("x-sim", "tokens=20,drop_after=3")]))
        r = c.read_response()  # parses the chunked body to its last chunk
        assert r.status == 200 and r.header("content-type").startswith("text/event-stream")
        events = [e for e in r.body.split(b"\n\n") if e.strip()]
        assert all(e.startswith(b"data: ") for e in events), events
        last = json.loads(events[-1][6:])
        assert last["error"]["code"] == "stream_broken", last
        assert last["error"]["type"] == "server_error"
        tokens = [json.loads(e[6:]) for e in events[:-1]]
        assert sum(1 for t in tokens if t["choices"][0]["delta"].get("content")) == 3, tokens
        assert b"[DONE]" not in r.body
        # The connection stays usable: the stream was ended properly.
        c.send(raw_request("POST", CHAT, BODY, headers=[("Content-Type", "application/json")]))
        again = c.read_response()
        assert again.status == 200, again
    finally:
        c.close()
    # Not retried once the head was sent.
    assert sim.stats()["requests_total"] == 2
    assert metric(lx, "llmux_upstream_errors_total", node=sim.url, kind="stream_broken") == 1


# ---- health -----------------------------------------------------------------------

def test_dead_node_goes_unhealthy_and_returns_with_slow_start(procs):
    sims = [procs.sim(fast=True) for _ in range(3)]
    env = dict(FAST_HEALTH, SLOW_START_SECONDS="3")
    lx = procs.llmux(sims, args=["--strategy", "round_robin"], env=env)
    dead = sims[2]
    port = dead.port
    dead.kill()
    # Two failed probes 0.3 s apart (no traffic meanwhile, so no passive ejection).
    st = wait_for(lambda: (lambda n: n if n["state"] == "unhealthy" else None)(
        node_state(lx, dead.url)), T(5), interval=0.05, what="the dead node to go unhealthy")
    assert st["last_error"], st
    assert st["healthy"] is False
    assert metric(lx, "llmux_node_healthy", pool="*", node=dead.url) == 0
    assert metric(lx, "llmux_node_state", pool="*", node=dead.url, state="unhealthy") == 1
    with lx.new_client() as c:
        for i in range(30):
            r = c.post(CHAT, content=BODY)
            assert r.status_code == 200 and r.headers["x-routed-node"] != dead.url, r.text

    # Recovery: a new sim on the same port (the listener uses SO_REUSEPORT).
    back = procs.sim(fast=True, port=port)
    assert back.url == dead.url
    wait_for(lambda: node_state(lx, dead.url)["state"] != "unhealthy", T(5), interval=0.01,
             what="the node to be probed healthy again")
    assert node_state(lx, dead.url)["state"] == "slow_start"
    with lx.new_client() as c:
        early = Counter(c.post(CHAT, content=BODY).headers["x-routed-node"] for _ in range(60))
    # Right after recovery it weighs ~5-15 % of a full node: far below a third.
    assert early[dead.url] <= 0.15 * 60, early
    wait_for(lambda: node_state(lx, dead.url)["state"] == "healthy", T(3) + 5, interval=0.05,
             what="the end of slow start")
    with lx.new_client() as c:
        late = Counter(c.post(CHAT, content=BODY).headers["x-routed-node"] for _ in range(60))
    assert 18 <= late[dead.url] <= 22, late
    assert back.stats()["requests_total"] == early[dead.url] + late[dead.url]


def test_failing_node_is_ejected_without_waiting_for_probes(procs):
    """A node answering 500 to every request (and 200 to /health) gets
    HEALTH_FAILURE_THRESHOLD requests, then none until its cooldown ends;
    when it fails again after the cooldown, it is ejected again at once."""
    bad = procs.sim(fast=True, error_rate=1)
    good = [procs.sim(fast=True), procs.sim(fast=True)]
    lx = procs.llmux([bad] + good, args=["--strategy", "round_robin"],
                     env={"HEALTH_CHECK_INTERVAL_SECONDS": "60", "HEALTH_FAILURE_THRESHOLD": "3",
                          "EJECT_COOLDOWN_SECONDS": "1", "SLOW_START_SECONDS": "0"})
    with lx.new_client() as c:
        for i in range(30):
            r = c.post(CHAT, content=BODY)
            assert r.status_code == 200, (i, r.text)
    assert bad.stats()["requests_total"] == 3
    st = node_state(lx, bad.url)
    assert st["state"] == "ejected" and "5xx" in st["last_error"], st
    assert st["failures_total"] == 3
    wait_for(lambda: node_state(lx, bad.url)["state"] != "ejected", T(1) + 3, interval=0.05,
             what="the cooldown to end")
    with lx.new_client() as c:
        for i in range(9):
            assert c.post(CHAT, content=BODY).status_code == 200
    # Still failing: one try, then ejected again (for twice as long).
    assert bad.stats()["requests_total"] == 4
    assert node_state(lx, bad.url)["state"] == "ejected"
    assert sum(s.stats()["requests_total"] for s in good) == 39


def test_all_nodes_unhealthy_fails_fast_with_503(procs):
    up = {"health": 503}

    def node(conn, req):
        if req.method == "GET":
            conn.send(http_response(up["health"], b"", reason="X"))
        else:
            conn.send(http_response(200, b'{"ok":true}', reason="OK"))
        return True
    nodes = [procs.pynode(node), procs.pynode(node)]
    lx = procs.llmux(nodes, env=FAST_HEALTH)
    wait_for(lambda: lx.client.get("/health").status_code == 503, T(5), interval=0.05,
             what="every node to go unhealthy")
    for stream in (False, True):
        t0 = time.monotonic()
        r = lx.client.post(CHAT, json=chat_body(stream=stream), headers={"X-Request-Id": "down-1"})
        elapsed = time.monotonic() - t0
        assert r.status_code == 503, r.text
        err = assert_openai_error(r.json())
        assert err["code"] == "no_healthy_node", err
        assert 1 <= int(r.headers["retry-after"]) <= 60, r.headers
        assert r.headers["x-request-id"] == "down-1"
        assert elapsed < T(2), elapsed
    assert [len(n.posts) for n in nodes] == [0, 0], "a node was tried"
    assert metric(lx, "llmux_requests_rejected_total", reason="no_healthy_node") == 2
    health = lx.client.get("/health").json()
    assert all(n["state"] == "unhealthy" for n in health["nodes"]), health
    # They come back: requests flow again.
    up["health"] = 200
    wait_for(lambda: lx.client.get("/health").status_code == 200, T(5), interval=0.05,
             what="the nodes to come back")
    r = lx.client.post(CHAT, content=BODY)
    assert r.status_code == 200 and r.content == b'{"ok":true}', r.text


def test_all_nodes_ejected_fails_fast_with_503(procs):
    sims = [procs.sim(fast=True, error_rate=1), procs.sim(fast=True, error_rate=1)]
    lx = procs.llmux(sims, env={"HEALTH_FAILURE_THRESHOLD": "1", "EJECT_COOLDOWN_SECONDS": "60",
                                "HEALTH_CHECK_INTERVAL_SECONDS": "60", "MAX_RETRIES": "2"})
    r = lx.client.post(CHAT, content=BODY)
    assert r.status_code == 500, r.text  # both tried, the last answer relayed
    assert [s.stats()["requests_total"] for s in sims] == [1, 1]
    assert [n["state"] for n in lx.health()["nodes"]] == ["ejected", "ejected"]
    r = lx.client.post(CHAT, content=BODY)
    assert r.status_code == 503, r.text
    assert assert_openai_error(r.json())["code"] == "no_healthy_node"
    assert "retry-after" in r.headers
    assert [s.stats()["requests_total"] for s in sims] == [1, 1]  # nobody tried
    assert lx.client.get("/health").status_code == 503


# ---- timeouts ---------------------------------------------------------------------

def test_stream_idle_timeout_ends_the_stream_with_an_error_event(procs):
    closed = threading.Event()

    def stall(conn, req):
        if req.method == "GET":
            conn.send(http_response(200, b"", reason="OK"))
            return True
        conn.send(sse_head())
        conn.send(chunk(b'data: {"n":1}\n\n'))
        try:
            conn.sock.settimeout(30)
            while conn.sock.recv(4096):  # until llmux gives up and closes
                pass
            closed.set()
        except OSError:
            closed.set()
        return False
    node = procs.pynode(stall)
    lx = procs.llmux([node], env={"STREAM_IDLE_TIMEOUT_SECONDS": "1", "NODE_TIMEOUT_SECONDS": "30"})
    with lx.new_client() as c:
        with c.stream("POST", CHAT, json=chat_body(stream=True)) as r:
            assert r.status_code == 200
            events = read_sse(r)  # ends cleanly
    assert events[0].data == b'{"n":1}', events
    assert len(events) == 2, events
    err = events[1].json()["error"]
    assert err["code"] == "stream_broken" and err["type"] == "server_error", err
    # The gap before the error is the idle timeout, not less.
    assert events[1].t - events[0].t >= 0.9, events[1].t - events[0].t
    assert closed.wait(T(10)), "llmux did not close the stalled node connection"
    assert len(node.posts) == 1  # not retried


def test_total_timeout_is_504_before_the_head(procs):
    sim = procs.sim(fast=True)
    lx = procs.llmux([sim], env={"TOTAL_TIMEOUT_SECONDS": "1", "NODE_TIMEOUT_SECONDS": "60",
                                 "MAX_RETRIES": "2"})
    slow_ms = int(T(20) * 1000)
    t0 = time.monotonic()
    r = lx.client.post(CHAT, content=BODY, headers={"x-sim": "delay_ms=%d" % slow_ms})
    elapsed = time.monotonic() - t0
    assert r.status_code == 504, r.text
    assert assert_openai_error(r.json())["code"] == "total_timeout"
    assert r.headers["x-routed-node"] == sim.url
    assert 0.9 <= elapsed < slow_ms / 1000 / 2, elapsed
    # The node's request was cancelled, and not retried.
    wait_for(lambda: sim.stats()["aborted_total"] == 1, T(10), what="the node request to go")
    assert sim.stats()["requests_total"] == 1
    assert lx.client.get("/stats").json()["gateway"]["active_requests"] == 0


def test_total_timeout_breaks_a_started_stream(procs):
    sim = procs.sim(decode_ms=50)
    lx = procs.llmux([sim], env={"TOTAL_TIMEOUT_SECONDS": "1"})
    body = chat_body(stream=True, max_tokens=400)
    with lx.new_client() as c:
        with c.stream("POST", CHAT, json=body) as r:
            assert r.status_code == 200
            events = read_sse(r)
    assert len(events) >= 3, events  # some tokens went out first
    err = events[-1].json()["error"]
    assert err["code"] == "total_timeout", err
    assert not any(e.done for e in events)
    wait_for(lambda: sim.stats()["running"] == 0, T(10), what="the node to stop generating")
    assert sim.stats()["aborted_total"] == 1
