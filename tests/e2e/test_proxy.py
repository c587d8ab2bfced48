"""
Proxying through llmux to llmux-sim nodes: byte-identical bodies, both
endpoints, models, round robin, node keep-alive reuse, large bodies.
"""
import hashlib
import json
import re

import httpx
import pytest

from conftest import T
from e2e_util import chat_body, completion_body

CHAT = "/v1/chat/completions"
COMPL = "/v1/completions"


def body_for(path, stream, **kw):
    if path == CHAT:
        obj = chat_body(content="Tell me about load balancers", stream=stream, max_tokens=12,
                        **kw)
    else:
        obj = completion_body(prompt="The quick brown fox", stream=stream, max_tokens=12, **kw)
    return json.dumps(obj).encode()


ID_RE = re.compile(rb'"id":"(chatcmpl|cmpl)-[0-9a-f]+"')


def diagnose(direct, via):
    """Explains a body mismatch: the sim's id is a hash of the request body,
    so bodies that differ only in "id" mean llmux changed the request body."""
    if ID_RE.sub(b'"id":"X"', direct) == ID_RE.sub(b'"id":"X"', via):
        return ("the answers differ only in their id, a hash of the request body: llmux "
                "forwarded a different body than the client sent (SPEC: forwarded unchanged)")
    return "the node's bytes were changed on the way"


USAGE_ASK = b'{"stream_options":{"include_usage":true},'


def with_usage_asked(body):
    """The body llmux sends for a stream whose client did not ask for usage
    (docs/ARCHITECTURE.md, "Token counts"): stream_options added up front."""
    assert body.startswith(b"{") and b"stream_options" not in body
    return USAGE_ASK + body[1:]


def without_usage_events(sse):
    """The stream minus its usage-only events, as llmux relays it."""
    return b"".join(ev + b"\n\n" for ev in sse.split(b"\n\n")[:-1]
                    if b'"choices":[]' not in ev)


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
@pytest.mark.parametrize("path", [CHAT, COMPL], ids=["chat", "completions"])
def test_body_is_byte_identical_to_the_node(procs, path, stream):
    """Non-streamed: the node's bytes exactly. Streamed without usage asked:
    exactly what the node sends for the body llmux forwards, less the usage
    event llmux asked for on its own account."""
    sim = procs.sim(fast=True)
    lx = procs.llmux([sim])
    body = body_for(path, stream)
    sent = with_usage_asked(body) if stream else body
    direct = sim.client.post(path, content=sent, headers={"Content-Type": "application/json"})
    via = lx.client.post(path, content=body, headers={"Content-Type": "application/json"})
    assert direct.status_code == 200, direct.text
    assert via.status_code == 200, via.text
    expected = without_usage_events(direct.content) if stream else direct.content
    if stream:
        assert b'"choices":[]' in direct.content, "the node was asked for usage"
    assert via.content == expected, diagnose(expected, via.content)
    assert via.headers["content-type"] == direct.headers["content-type"]
    if stream:
        assert via.headers["content-type"].startswith("text/event-stream")
        assert via.content.endswith(b"data: [DONE]\n\n")
    else:
        assert via.headers["content-type"].startswith("application/json")
        got = via.json()
        assert got["object"] == ("chat.completion" if path == CHAT else "text_completion")
        assert got["usage"]["completion_tokens"] == 12
    assert via.headers["x-routed-node"] == sim.url
    assert via.headers["x-request-id"]
    assert sim.stats()["requests_total"] == 2


def test_stream_with_usage_is_byte_identical(procs):
    sim = procs.sim(fast=True)
    lx = procs.llmux([sim])
    body = body_for(CHAT, True, stream_options={"include_usage": True})
    direct = sim.client.post(CHAT, content=body)
    via = lx.client.post(CHAT, content=body)
    assert via.status_code == 200 and via.content == direct.content
    assert b'"usage"' in via.content


def test_models_forwarded_to_a_node_when_any_model_is_served(procs):
    sim = procs.sim(fast=True, model="node-model-x")
    lx = procs.llmux([sim])
    direct = sim.client.get("/v1/models")
    via = lx.client.get("/v1/models")
    assert via.status_code == 200, via.text
    assert via.content == direct.content
    assert via.headers["x-routed-node"] == sim.url
    assert [m["id"] for m in via.json()["data"]] == ["node-model-x"]


def test_model_flag_serves_only_that_model(procs):
    sim = procs.sim(fast=True, model="served-one")
    lx = procs.llmux([sim], args=["--model", "served-one"])
    r = lx.client.get("/v1/models")
    assert r.status_code == 200, r.text
    listing = r.json()
    assert listing["object"] == "list"
    assert [m["id"] for m in listing["data"]] == ["served-one"]
    assert listing["data"][0]["object"] == "model"
    r = lx.client.post(CHAT, json=chat_body(model="served-one", max_tokens=2))
    assert r.status_code == 200, r.text
    assert r.json()["model"] == "served-one"
    before = sim.stats()["requests_total"]
    r = lx.client.post(CHAT, json=chat_body(model="something-else", max_tokens=2))
    assert r.status_code == 404, r.text
    assert r.json()["error"]["code"] == "model_not_found"
    assert sim.stats()["requests_total"] == before, "an unknown model reached the node"


def test_model_name_env_is_the_same_as_the_flag(procs):
    sim = procs.sim(fast=True, model="env-model")
    lx = procs.llmux([sim], env={"MODEL_NAME": "env-model"})
    assert lx.client.post(CHAT, json=chat_body(model="env-model", max_tokens=1)).status_code == 200
    assert lx.client.post(CHAT, json=chat_body(model="nope", max_tokens=1)).status_code == 404


def test_round_robin_reaches_every_node_equally(procs):
    sims = [procs.sim(fast=True) for _ in range(3)]
    lx = procs.llmux(sims, args=["--strategy", "round_robin"])
    counts = {s.url: 0 for s in sims}
    keep = lx.new_client()
    try:
        for i in range(30):
            body = chat_body(content="rr %d" % i, max_tokens=2)
            if i % 2:
                r = keep.post(CHAT, json=body)
            else:
                # A fresh connection: it may land on the other worker.
                with lx.new_client() as c:
                    r = c.post(CHAT, json=body)
            assert r.status_code == 200, r.text
            counts[r.headers["x-routed-node"]] += 1
    finally:
        keep.close()
    assert counts == {s.url: 10 for s in sims}, counts
    assert [s.stats()["requests_total"] for s in sims] == [10, 10, 10]
    nodes = lx.node_stats()
    assert [nodes[s.url]["requests_total"] for s in sims] == [10, 10, 10], nodes


def test_node_names_from_config_file(procs):
    a, b = procs.sim(fast=True), procs.sim(fast=True)
    cfg = procs.tmp / "named.json"
    cfg.write_text(json.dumps({"models": {"sim-model": {"servers": [
        {"url": a.url, "name": "alpha"}, {"url": b.url, "name": "beta"}]}}}))
    lx = procs.llmux(args=["--config", str(cfg)])
    seen = set()
    for i in range(4):
        r = lx.client.post(CHAT, json=chat_body(max_tokens=1))
        assert r.status_code == 200, r.text
        seen.add(r.headers["x-routed-node"])
    assert seen == {"alpha", "beta"}


def test_node_keepalive_connections_are_reused(procs):
    sim = procs.sim(fast=True)
    workers = 2
    lx = procs.llmux([sim], workers=workers)
    before = sim.stats()["connections_total"]
    keep = lx.new_client()
    try:
        for i in range(100):
            body = chat_body(content="reuse %d" % (i % 7), max_tokens=3)
            if i % 2:
                r = keep.post(CHAT, json=body)
            else:
                with lx.new_client() as c:
                    r = c.post(CHAT, json=body)
            assert r.status_code == 200, r.text
    finally:
        keep.close()
    st = sim.stats()
    assert st["requests_total"] == 100
    opened = st["connections_total"] - before
    assert opened <= workers * 2 + 2, "llmux opened %d node connections for 100 requests" % opened


def test_ten_mib_body_is_forwarded_intact(procs):
    node = procs.pynode()
    lx = procs.llmux([node])
    prompt = ("lorem ipsum dolor sit amet %d " * 8) * 45000
    body = json.dumps({"model": "m", "prompt": prompt[:10 * 1024 * 1024]}).encode()
    assert len(body) > 10 * 1024 * 1024
    r = lx.client.post(COMPL, content=body, timeout=T(60))
    assert r.status_code == 200, r.text[:500]
    got = r.json()
    assert got["body_len"] == len(body)
    assert got["body_sha256"] == hashlib.sha256(body).hexdigest()


def test_ten_mib_prompt_is_answered_by_the_sim(procs):
    sim = procs.sim(fast=True, kv_cache_tokens=8000000, max_model_len=8000000)
    lx = procs.llmux([sim])
    words = "alpha beta gamma delta epsilon zeta eta theta "
    prompt = words * (10 * 1024 * 1024 // len(words) + 1)
    body = json.dumps(completion_body(prompt=prompt, max_tokens=4)).encode()
    assert len(body) > 10 * 1024 * 1024
    direct = sim.client.post(COMPL, content=body, timeout=T(60))
    assert direct.status_code == 200, direct.text[:500]
    r = lx.client.post(COMPL, content=body, timeout=T(60))
    assert r.status_code == 200, r.text[:500]
    assert r.content == direct.content


def test_completions_with_a_list_prompt(procs):
    sim = procs.sim(fast=True)
    lx = procs.llmux([sim])
    body = json.dumps(completion_body(prompt=["a b c", "d e f"], max_tokens=3)).encode()
    direct = sim.client.post(COMPL, content=body)
    via = lx.client.post(COMPL, content=body)
    assert via.status_code == direct.status_code
    assert via.content == direct.content


def test_gzip_accept_encoding_does_not_break_bodies(procs):
    """Whatever the node does with Accept-Encoding, the client gets the node's bytes."""
    sim = procs.sim(fast=True)
    lx = procs.llmux([sim])
    body = body_for(CHAT, False)
    direct = sim.client.post(CHAT, content=body, headers={"Accept-Encoding": "gzip"})
    via = lx.client.post(CHAT, content=body, headers={"Accept-Encoding": "gzip"})
    assert via.status_code == 200
    assert via.content == direct.content
    assert via.headers.get("content-encoding") == direct.headers.get("content-encoding")


def test_sim_answers_directly_are_deterministic(procs):
    """The premise of the byte-identity tests: same body, same bytes."""
    sim = procs.sim(fast=True)
    body = body_for(CHAT, False)
    a = sim.client.post(CHAT, content=body)
    with httpx.Client(base_url=sim.url, trust_env=False, timeout=T(30)) as other:
        b = other.post(CHAT, content=body)
    assert a.status_code == b.status_code == 200
    assert a.content == b.content


def _big_body(n):
    block = bytes(range(256)) * 4096  # 1 MiB of every byte value
    return (block * (n // len(block) + 1))[:n]


def test_large_response_is_relayed_intact_to_a_slow_reader(procs):
    """30 MiB from the node, read slowly: llmux must apply backpressure and
    neither drop nor reorder bytes."""
    import time
    size = 30 * 1024 * 1024
    payload = _big_body(size)

    def handler(conn, req):
        conn.send(b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
                  b"Content-Length: %d\r\n\r\n" % size)
        conn.send(payload)
        return True
    node = procs.pynode(handler)
    lx = procs.llmux([node])
    h = hashlib.sha256()
    got = 0
    with lx.new_client(timeout=T(60)) as c:
        with c.stream("POST", CHAT, json=chat_body()) as r:
            assert r.status_code == 200
            assert r.headers["content-length"] == str(size)
            for i, part in enumerate(r.iter_raw()):
                h.update(part)
                got += len(part)
                if i < 20:
                    time.sleep(0.02)  # a slow start: the socket buffers fill up
    assert got == size
    assert h.hexdigest() == hashlib.sha256(payload).hexdigest()


def test_large_chunked_response_is_relayed_intact(procs):
    size = 8 * 1024 * 1024
    payload = _big_body(size)

    def handler(conn, req):
        conn.send(b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
                  b"Transfer-Encoding: chunked\r\n\r\n")
        step = 100003
        for i in range(0, size, step):
            part = payload[i:i + step]
            conn.send(b"%x\r\n%s\r\n" % (len(part), part))
        conn.send(b"0\r\n\r\n")
        return True
    node = procs.pynode(handler)
    lx = procs.llmux([node])
    r = lx.client.post(CHAT, json=chat_body(), timeout=T(60))
    assert r.status_code == 200
    assert len(r.content) == size
    assert r.content == payload


def test_interim_100_from_a_node_is_not_the_answer(procs):
    """A node may send 100 Continue unasked; the client gets the final answer."""
    def handler(conn, req):
        conn.send(b"HTTP/1.1 100 Continue\r\n\r\n")
        conn.send(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                  b"Content-Length: 11\r\n\r\n{\"final\":1}")
        return True
    node = procs.pynode(handler)
    lx = procs.llmux([node])
    r = lx.client.post(CHAT, json=chat_body())
    assert r.status_code == 200, r.text
    assert r.content == b'{"final":1}'


def test_node_closing_idle_connections_early_is_not_an_error(procs):
    """The sim closes idle keep-alive connections after 100 ms, far sooner than
    llmux's pool keeps them: requests that find a pooled connection closed
    (or closing right then) must still succeed, with no retry budget."""
    import random
    import time
    sim = procs.sim(fast=True, keep_alive_ms=100)
    lx = procs.llmux([sim], workers=1, env={"MAX_RETRIES": "0"})
    rnd = random.Random(7)
    with lx.new_client() as c:
        for i in range(20):
            r = c.post(CHAT, json=chat_body(content="ka %d" % i, max_tokens=1))
            assert r.status_code == 200, (i, r.text)
            time.sleep(rnd.uniform(0.07, 0.13))  # around the node's idle limit
    assert sim.stats()["requests_total"] == 20


def test_request_body_is_forwarded_unchanged(procs):
    """SPEC: "The body is forwarded unchanged (except upstream_model)", and
    issue 4: a stream whose client did not ask for usage gets
    stream_options.include_usage added, so that its tokens can be counted."""
    node = procs.pynode()
    lx = procs.llmux([node])
    changed = []
    for path in (CHAT, COMPL):
        for stream in (False, True):
            body = body_for(path, stream)
            r = lx.client.post(path, content=body)
            assert r.status_code == 200, r.text
            got = r.json()
            want = with_usage_asked(body) if stream else body
            if got["body_sha256"] != hashlib.sha256(want).hexdigest():
                changed.append("%s stream=%s: sent %r, node got %r"
                               % (path, stream, body, got["body_head"]))
    assert not changed, "\n".join(changed)


def test_stream_without_usage_request_gets_no_usage_chunk(procs):
    """Whatever llmux does to count tokens, a client that did not ask for
    usage gets the node's events and no usage chunk."""
    sim = procs.sim(fast=True)
    lx = procs.llmux([sim])
    body = body_for(CHAT, True)
    direct = sim.client.post(CHAT, content=body).content
    via = lx.client.post(CHAT, content=body).content
    assert b'"usage"' not in direct
    assert b'"usage"' not in via, via[-600:]
    assert ID_RE.sub(b'"id":"X"', via) == ID_RE.sub(b'"id":"X"', direct)
