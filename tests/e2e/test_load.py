"""
Load: many sequential and concurrent requests through llmux, every answer
checked against what the node itself answers for the same body.
"""
import concurrent.futures as cf
import json
import threading

import httpx

from conftest import T
from e2e_util import chat_body, completion_body, wait_for

CHAT = "/v1/chat/completions"
COMPL = "/v1/completions"
N_PROMPTS = 10


def bodies():
    out = []
    for i in range(N_PROMPTS):
        if i % 2:
            out.append((COMPL, json.dumps(completion_body(prompt="load %d" % i,
                                                          max_tokens=4 + i)).encode()))
        else:
            out.append((CHAT, json.dumps(chat_body(content="load %d" % i,
                                                   max_tokens=4 + i)).encode()))
    return out


def expected_answers(sims, reqs):
    """{(node url, body index): bytes}: each node's own answer to each body."""
    exp = {}
    for s in sims:
        for i, (path, body) in enumerate(reqs):
            r = s.client.post(path, content=body)
            assert r.status_code == 200, r.text
            exp[(s.url, i)] = r.content
    return exp


def test_1000_sequential_requests(procs):
    sims = [procs.sim(fast=True), procs.sim(fast=True)]
    lx = procs.llmux(sims)
    reqs = bodies()
    exp = expected_answers(sims, reqs)
    routed = {s.url: 0 for s in sims}
    with lx.new_client() as c:
        for k in range(1000):
            i = k % N_PROMPTS
            path, body = reqs[i]
            r = c.post(path, content=body)
            assert r.status_code == 200, (k, r.text)
            node = r.headers["x-routed-node"]
            assert r.content == exp[(node, i)], (k, node)
            routed[node] += 1
    assert routed == {s.url: 500 for s in sims}, routed
    nodes = lx.node_stats()
    assert all(n["in_flight"] == 0 for n in nodes.values()), nodes


def test_200_concurrent_requests(procs):
    sims = [procs.sim(fast=True), procs.sim(fast=True)]
    lx = procs.llmux(sims)
    reqs = bodies()
    exp = expected_answers(sims, reqs)
    n = 200
    barrier = threading.Barrier(n, timeout=T(30))

    def one(k):
        i = k % N_PROMPTS
        path, body = reqs[i]
        with httpx.Client(base_url=lx.url, timeout=T(60), trust_env=False) as c:
            barrier.wait()  # all 200 go out together
            r = c.post(path, content=body)
        return k, i, r

    with cf.ThreadPoolExecutor(n) as ex:
        results = list(ex.map(one, range(n)))
    bad = []
    for k, i, r in results:
        node = r.headers.get("x-routed-node")
        if r.status_code != 200 or r.content != exp.get((node, i)):
            bad.append((k, r.status_code, node, r.text[:200]))
    assert not bad, "%d of %d wrong, e.g. %r" % (len(bad), n, bad[:5])
    counts = {}
    for _, _, r in results:
        counts[r.headers["x-routed-node"]] = counts.get(r.headers["x-routed-node"], 0) + 1
    assert counts == {s.url: n // 2 for s in sims}, counts
    wait_for(lambda: all(v["in_flight"] == 0 for v in lx.node_stats().values()), T(10),
             what="in_flight back to 0")
    assert sum(s.stats()["requests_total"] for s in sims) == n + 2 * N_PROMPTS


def test_concurrent_requests_on_slow_nodes_all_complete(procs):
    """Requests overlap in the nodes' batches (decode time > 0)."""
    sims = [procs.sim(decode_ms=5), procs.sim(decode_ms=5)]
    lx = procs.llmux(sims)
    reqs = bodies()
    exp = expected_answers(sims, reqs)

    def one(k):
        i = k % N_PROMPTS
        path, body = reqs[i]
        with lx.new_client(timeout=T(60)) as c:
            r = c.post(path, content=body)
        return i, r

    with cf.ThreadPoolExecutor(50) as ex:
        results = list(ex.map(one, range(100)))
    for i, r in results:
        assert r.status_code == 200, r.text
        assert r.content == exp[(r.headers["x-routed-node"], i)]


def test_pipelined_burst_on_one_connection(procs):
    from e2e_util import RawConn, raw_request
    sim = procs.sim(fast=True)
    lx = procs.llmux([sim])
    reqs = bodies()
    exp = expected_answers([sim], reqs)
    data = b"".join(raw_request("POST", path, body, headers=[("X-Request-Id", "burst-%d" % k)])
                    for k, (path, body) in enumerate(reqs * 10))
    c = RawConn(lx.port, timeout=T(30))
    try:
        c.send(data)
        for k in range(len(reqs) * 10):
            r = c.read_response()
            assert r.status == 200, r
            assert r.header("x-request-id") == "burst-%d" % k
            assert r.body == exp[(sim.url, k % N_PROMPTS)]
    finally:
        c.close()
