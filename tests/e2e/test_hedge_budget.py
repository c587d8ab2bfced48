"""
TTFT hedging (HEDGE_AFTER_SECONDS), the retry budget (RETRY_BUDGET_PERCENT)
and the client's deadline (X-Stainless-Timeout), through real processes.
"""
import json
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx

from conftest import T
from e2e_util import chat_body, read_sse, wait_for

CHAT = "/v1/chat/completions"


def metric(lx, name, labels=""):
    m = lx.client.get("/metrics").text
    hit = re.search(r"^%s%s (\d+)" % (re.escape(name), re.escape(labels)), m, re.M)
    return int(hit.group(1)) if hit else None


def hedges(lx):
    return {o: metric(lx, "llmux_hedges_total", '{outcome="%s"}' % o)
            for o in ("started", "won", "lost")}


def timed_stream(client, body):
    """(seconds to the first content token, text, routed node, [DONE] count)."""
    t0 = time.monotonic()
    with client.stream("POST", CHAT, content=json.dumps(body).encode()) as r:
        assert r.status_code == 200, r.read()
        events = read_sse(r)
        node = r.headers["x-routed-node"]
    firsts = [e.t for e in events
              if not e.done and e.json()["choices"] and e.json()["choices"][0]["delta"].get("content")]
    text = "".join(e.json()["choices"][0]["delta"].get("content") or "" for e in events
                   if not e.done and e.json()["choices"])
    return firsts[0] - t0, text, node, sum(e.done for e in events)


def test_a_slow_first_token_is_hedged(procs):
    """One node takes ~3 s to its first token (a long prefill): with hedging
    at 0.3 s every stream has its first token within 1 s, from another node,
    and the slow node's sequence is cancelled at once."""
    slow = procs.sim(prefill_tps=6, decode_ms=5)
    fast = [procs.sim(decode_ms=5) for _ in range(2)]
    ref = procs.sim(fast=True)
    lx = procs.llmux([slow] + fast, args=["--strategy", "round_robin", "--hedge-after", "0.3"])
    for i in range(6):
        body = chat_body(content="hedge me %d please" % i, stream=True, max_tokens=8)
        ttft, text, node, ndone = timed_stream(lx.client, body)
        assert ttft < 1.0, (i, ttft, node)
        assert node != slow.url
        assert ndone == 1
        r = ref.client.post(CHAT, json=dict(body, stream=False))
        assert text == r.json()["choices"][0]["message"]["content"]
    # Round robin sent two of the six to the slow node first; both were hedged and lost there.
    got = hedges(lx)
    assert got == {"started": 2, "won": 2, "lost": 0}, got
    wait_for(lambda: slow.stats()["running"] == 0 and slow.stats()["waiting"] == 0, T(1),
             what="the slow node's hedged-away sequences to be cancelled")
    assert slow.stats()["aborted_total"] == 2, slow.stats()
    assert lx.node_stats()[slow.url]["in_flight"] == 0


def test_hedge_that_loses_is_cancelled(procs):
    """The original's first token comes before the hedge's: the hedge is
    cancelled and the original's stream is relayed."""
    a = procs.sim(prefill_tps=40, decode_ms=5)      # ~0.5 s to the first token
    b = procs.sim(prefill_tps=4, decode_ms=5)       # ~5 s
    lx = procs.llmux([a, b], args=["--strategy", "round_robin", "--hedge-after", "0.2"])
    for i in range(2):
        body = chat_body(content="race %d of two nodes" % i, stream=True, max_tokens=4)
        ttft, _, node, ndone = timed_stream(lx.client, body)
        assert node == a.url and ndone == 1
    # One started on a (hedged to b, which lost), one on b (hedged to a, which won).
    got = hedges(lx)
    assert got == {"started": 2, "won": 1, "lost": 1}, got
    wait_for(lambda: b.stats()["running"] + b.stats()["waiting"] == 0, T(2),
             what="b's sequences to be cancelled")


def test_hedging_is_off_by_default_and_non_streams_are_hedged(procs):
    slow = procs.sim(prefill_tps=20, decode_ms=5)   # ~1 s to the first token
    fast = procs.sim(decode_ms=5)
    lx = procs.llmux([slow, fast], args=["--strategy", "round_robin"])
    for i in range(2):
        r = lx.client.post(CHAT, json=chat_body(content="plain %d here" % i, max_tokens=4))
        assert r.status_code == 200
    assert hedges(lx) == {"started": 0, "won": 0, "lost": 0}
    lx2 = procs.llmux([slow, fast], args=["--strategy", "round_robin", "--hedge-after", "0.2"])
    for i in range(2):
        t0 = time.monotonic()
        r = lx2.client.post(CHAT, json=chat_body(content="plain %d here" % i, max_tokens=4))
        assert r.status_code == 200 and time.monotonic() - t0 < 0.8
        assert r.headers["x-routed-node"] == fast.url
    assert hedges(lx2)["won"] == 1


def test_retry_budget_bounds_node_requests(procs):
    """Every node answers 500: 300 client requests make at most 1.2 x 300
    node requests plus the floor (1 a second over the 10 s window), not
    3 x 300; a request refused a retry gets the node's own error."""
    sims = [procs.sim(fast=True, error_rate=1) for _ in range(3)]
    # Without passive ejection, so that only the budget holds retries back.
    lx = procs.llmux(sims, args=["--strategy", "round_robin", "--max-retries", "2"],
                     env={"EJECT_COOLDOWN_SECONDS": "0"})

    def client(k):
        with lx.new_client(timeout=T(10)) as c:
            return [(r.status_code, r.json()) for r in
                    (c.post(CHAT, json=chat_body(max_tokens=2)) for _ in range(k, 300, 6))]

    t0 = time.monotonic()
    with ThreadPoolExecutor(6) as pool:
        answers = [a for part in pool.map(client, range(6)) for a in part]
    elapsed = time.monotonic() - t0
    assert len(answers) == 300
    # A retry refused or the retries used up: the node's own 500, relayed.
    assert {status for status, _ in answers} == {500}, {s for s, _ in answers}
    node_requests = sum(s.stats()["requests_total"] for s in sims)
    # The floor: 1 a second, over the run and the 10 s window it started in.
    assert 300 <= node_requests <= 1.2 * 300 + 1 * (elapsed + 10) + 1, (node_requests, elapsed)
    refused = metric(lx, "llmux_retries_refused_total")
    assert refused >= 300 - (node_requests - 300), (refused, node_requests)
    # The node's own error (its message, in OpenAI's shape), not llmux's 502.
    assert all(body["error"]["message"] == "simulated error (--error-rate)"
               for _, body in answers)


def test_expired_client_deadline_in_the_queue_is_503(procs):
    sim = procs.sim(decode_ms=20)
    lx = procs.llmux([sim], args=["--max-concurrent", "1"])
    holder = threading.Thread(
        target=lambda: lx.new_client(timeout=T(30)).post(
            CHAT, json=chat_body(max_tokens=150)))
    holder.start()
    wait_for(lambda: sim.stats()["running"] == 1, T(10), what="the slot to be taken")
    t0 = time.monotonic()
    r = lx.client.post(CHAT, json=chat_body(max_tokens=2),
                       headers={"X-Stainless-Timeout": "0.5"})
    waited = time.monotonic() - t0
    assert r.status_code == 503, r.text
    assert r.json()["error"]["code"] == "client_deadline"
    assert int(r.headers["retry-after"]) >= 1
    assert 0.4 < waited < 5, waited
    # Never reached the node; a bad header value is ignored (queued as usual).
    assert sim.stats()["requests_total"] == 1
    with httpx.Client(base_url=lx.url, timeout=T(30), trust_env=False) as c:
        r = c.post(CHAT, json=chat_body(max_tokens=2), headers={"X-Request-Timeout": "soon"})
    assert r.status_code == 200
    holder.join(T(30))


def test_decisions_in_the_access_log(procs, tmp_path):
    """attempts, hedge, resumed, budget_refused: what became of each request."""
    broken = procs.sim(fast=True, drop_after=3)
    slow = procs.sim(prefill_tps=6, decode_ms=5)
    good = procs.sim(decode_ms=5)
    log = tmp_path / "access.log"
    lx = procs.llmux([broken, slow, good],
                     args=["--strategy", "round_robin", "--hedge-after", "0.3",
                           "--access-log", log])
    for i in range(3):  # one starts on each node
        r = lx.client.post(CHAT, json=chat_body(content="logged %d" % i, stream=True,
                                                max_tokens=6), headers={"X-Request-Id": "r%d" % i})
        assert r.status_code == 200 and r.text.endswith("data: [DONE]\n\n"), r.text[-200:]
    lines = {}
    wait_for(lambda: lines.update({e["request_id"]: e for e in map(
        json.loads, log.read_text().splitlines())}) or len(lines) == 3, T(10),
        what="three access log lines")
    by_node = {e["node"]: e for e in lines.values()}
    # Started on the broken node: resumed once on another, 2 attempts.
    resumed = [e for e in lines.values() if e["resumed"] == 1]
    assert len(resumed) == 1 and resumed[0]["attempts"] == 2 and resumed[0]["error"] is None
    # Started on the slow node: hedged, the hedge won (the node logged is the winner).
    hedged = [e for e in lines.values() if e["hedge"] == "won"]
    assert len(hedged) == 1 and hedged[0]["attempts"] == 2 and hedged[0]["node"] != slow.url
    assert all(e["budget_refused"] is False for e in lines.values())
    assert good.url in by_node
