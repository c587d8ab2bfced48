"""
SPEC.md's status table, retries and failover: what the client gets when it,
or a node, gets something wrong.
"""
import json
import socket
import time

import httpx
import pytest

from conftest import T
from e2e_nodes import http_response
from e2e_util import RawConn, assert_openai_error, chat_body, node_error_as_openai, raw_request

CHAT = "/v1/chat/completions"
COMPL = "/v1/completions"
BODY = json.dumps(chat_body(max_tokens=3)).encode()


# ---- 401 --------------------------------------------------------------------

@pytest.mark.parametrize("auth", [None, "Bearer wrong-token", "Bearer right-token-x",
                                  "Basic cmlnaHQtdG9rZW4=", "right-token", "Bearer",
                                  "Bearer  right-token"])
def test_missing_or_wrong_token_is_401(procs, auth):
    sim = procs.sim(fast=True)
    lx = procs.llmux([sim], env={"AUTH_TOKEN": "right-token"})
    headers = {"Authorization": auth} if auth is not None else {}
    for path in (CHAT, COMPL):
        r = lx.client.post(path, content=BODY, headers=headers)
        assert r.status_code == 401, (path, r.text)
        assert_openai_error(r.json())
        assert r.headers["content-type"].startswith("application/json")
    r = lx.client.get("/v1/models", headers=headers)
    assert r.status_code == 401, r.text
    assert sim.stats()["requests_total"] == 0, "an unauthorised request reached the node"


def test_right_token_passes_and_health_needs_none(procs):
    sim = procs.sim(fast=True)
    lx = procs.llmux([sim], args=["--auth-token", "right-token"])
    r = lx.client.post(CHAT, content=BODY, headers={"Authorization": "Bearer right-token"})
    assert r.status_code == 200, r.text
    r = lx.client.post(CHAT, content=BODY, headers={"authorization": "bearer right-token"})
    assert r.status_code == 200, "the auth scheme is case-insensitive: %s" % r.text
    assert lx.client.get("/health").status_code == 200


# ---- 400 --------------------------------------------------------------------

@pytest.mark.parametrize("body", [
    b"", b"not json", b"[1, 2, 3]", b'"a string"', b"42", b"null", b'{"model": "m"',
    b'{"model": "m"} trailing', b"\xff\xfe{}",
], ids=["empty", "text", "array", "string", "number", "null", "truncated", "trailing",
        "binary"])
def test_body_not_a_json_object_is_400(procs, body):
    sim = procs.sim(fast=True)
    lx = procs.llmux([sim])
    r = lx.client.post(CHAT, content=body, headers={"Content-Type": "application/json"})
    assert r.status_code == 400, r.text
    assert_openai_error(r.json())
    assert sim.stats()["requests_total"] == 0


@pytest.mark.parametrize("model", [5, None, True, ["m"], {"name": "m"}],
                         ids=["int", "null", "bool", "list", "object"])
def test_model_not_a_string_is_400(procs, model):
    sim = procs.sim(fast=True)
    lx = procs.llmux([sim])
    r = lx.client.post(COMPL, json={"model": model, "prompt": "x"})
    assert r.status_code == 400, r.text
    assert_openai_error(r.json())
    assert sim.stats()["requests_total"] == 0


def test_missing_model_is_400_when_a_model_is_configured(procs):
    sim = procs.sim(fast=True)
    lx = procs.llmux([sim], args=["--model", "sim-model"])
    r = lx.client.post(COMPL, json={"prompt": "x"})
    assert r.status_code == 400, r.text
    assert_openai_error(r.json())


# ---- 404 --------------------------------------------------------------------

def test_unknown_model_is_404(procs):
    sim = procs.sim(fast=True)
    lx = procs.llmux([sim], args=["--model", "sim-model"])
    for model in ("other-model", "sim-model-2", "SIM-MODEL", "sim-mode", ""):
        r = lx.client.post(CHAT, json=chat_body(model=model))
        assert r.status_code == 404, (model, r.text)
        err = assert_openai_error(r.json())
        assert model in err["message"]
    assert sim.stats()["requests_total"] == 0
    r = lx.client.post(CHAT, json=chat_body(model="sim-model", max_tokens=1))
    assert r.status_code == 200


def test_escaped_model_name_matches(procs):
    sim = procs.sim(fast=True)
    lx = procs.llmux([sim], args=["--model", "sim/model"])
    r = lx.client.post(COMPL, content=b'{"prompt": "x", "max_tokens": 1, "model": "sim\\/model"}')
    assert r.status_code == 200, r.text


# ---- 413 --------------------------------------------------------------------

def padded(n):
    """A valid JSON object body of exactly <n> bytes."""
    base = json.dumps(completion(max_tokens=1)).encode()
    assert len(base) + 2 <= n
    return base[:-1] + b" " * (n - len(base)) + b"}"


def completion(**kw):
    obj = {"model": "sim-model", "prompt": "p"}
    obj.update(kw)
    return obj


def test_body_over_max_body_bytes_is_413(procs):
    sim = procs.sim(fast=True)
    lx = procs.llmux([sim], args=["--max-body-bytes", "1000"])
    r = lx.client.post(COMPL, content=padded(1000))
    assert r.status_code == 200, r.text
    r = lx.new_client().post(COMPL, content=padded(1001))
    assert r.status_code == 413, r.text
    assert_openai_error(r.json())
    assert sim.stats()["requests_total"] == 1


def test_chunked_body_over_max_body_bytes_is_413(procs):
    sim = procs.sim(fast=True)
    lx = procs.llmux([sim], env={"MAX_BODY_BYTES": "1000"})
    body = padded(3000)
    c = RawConn(lx.port, timeout=T(10))
    try:
        c.send(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
        for i in range(0, len(body), 400):
            part = body[i:i + 400]
            try:
                c.send(b"%x\r\n%s\r\n" % (len(part), part))
            except OSError:
                break
        try:
            c.send(b"0\r\n\r\n")
        except OSError:
            pass
        r = c.read_response()
    finally:
        c.close()
    assert r.status == 413, r
    assert sim.stats()["requests_total"] == 0


def test_413_is_sent_before_a_huge_body_is_read(procs):
    """A Content-Length over the limit is refused from the head alone."""
    sim = procs.sim(fast=True)
    lx = procs.llmux([sim], env={"MAX_BODY_BYTES": "1000"})
    c = RawConn(lx.port, timeout=T(10))
    try:
        c.send(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 50000000\r\n\r\n")
        r = c.read_response()
    finally:
        c.close()
    assert r.status == 413, r


# ---- 502 / 504 --------------------------------------------------------------

@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_unreachable_node_is_502(procs, closed_port, stream):
    url = "http://127.0.0.1:%d" % closed_port
    lx = procs.llmux([url], env={"CONNECT_TIMEOUT_SECONDS": "2"})
    t0 = time.monotonic()
    r = lx.client.post(CHAT, json=chat_body(stream=stream), headers={"X-Request-Id": "unreach-1"})
    assert r.status_code == 502, r.text
    assert time.monotonic() - t0 < T(5), "a refused connect took long"
    assert_openai_error(r.json())
    # A stream that never started is answered like any other request.
    assert r.headers["content-type"].startswith("application/json")
    assert r.headers["x-request-id"] == "unreach-1"
    assert r.headers["x-routed-node"] == url


def test_all_nodes_unreachable_is_502(procs):
    ports = []
    socks = []
    for _ in range(3):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        ports.append(s.getsockname()[1])
        socks.append(s)
    for s in socks:
        s.close()
    lx = procs.llmux(["http://127.0.0.1:%d" % p for p in ports])
    r = lx.client.post(CHAT, content=BODY)
    assert r.status_code == 502, r.text
    assert_openai_error(r.json())


def test_unreachable_node_fails_over(procs, closed_port):
    sim = procs.sim(fast=True)
    lx = procs.llmux(["http://127.0.0.1:%d" % closed_port, sim], env={"MAX_RETRIES": "1"})
    for i in range(6):
        r = lx.client.post(CHAT, json=chat_body(content="fo %d" % i, max_tokens=2))
        assert r.status_code == 200, r.text
        assert r.headers["x-routed-node"] == sim.url
    assert sim.stats()["requests_total"] == 6


def test_node_timeout_is_504(procs):
    sim = procs.sim(fast=True)
    lx = procs.llmux([sim], env={"NODE_TIMEOUT_SECONDS": "1", "MAX_RETRIES": "0"})
    t0 = time.monotonic()
    r = lx.client.post(CHAT, content=BODY, headers={"x-sim": "hang=1"})
    elapsed = time.monotonic() - t0
    assert r.status_code == 504, r.text
    assert_openai_error(r.json())
    assert r.headers["x-routed-node"] == sim.url
    assert 0.8 <= elapsed < T(6), elapsed
    # The gateway closed its connection: the sim has no hung request left.
    from e2e_util import wait_for
    wait_for(lambda: sim.stats()["hung"] == 0, T(10), what="the hung call to be dropped")


def test_all_nodes_timing_out_is_504_after_trying_each(procs):
    sims = [procs.sim(hang=True), procs.sim(hang=True)]
    lx = procs.llmux(sims, env={"NODE_TIMEOUT_SECONDS": "1", "MAX_RETRIES": "1"})
    t0 = time.monotonic()
    r = lx.client.post(CHAT, content=BODY)
    elapsed = time.monotonic() - t0
    assert r.status_code == 504, r.text
    assert [s.stats()["requests_total"] for s in sims] == [1, 1]
    assert 1.6 <= elapsed < T(10), elapsed


def test_timeout_fails_over_to_a_healthy_node(procs):
    hung, ok = procs.sim(hang=True), procs.sim(fast=True)
    lx = procs.llmux([hung, ok], env={"NODE_TIMEOUT_SECONDS": "1"})
    for i in range(2):
        r = lx.client.post(CHAT, json=chat_body(content="t %d" % i, max_tokens=2))
        assert r.status_code == 200, r.text
        assert r.headers["x-routed-node"] == ok.url


def test_node_timeout_does_not_cut_a_slow_stream(procs):
    """NODE_TIMEOUT_SECONDS is the time to the first byte, not the whole answer."""
    sim = procs.sim(decode_ms=100)
    lx = procs.llmux([sim], env={"NODE_TIMEOUT_SECONDS": "1"})
    r = lx.client.post(CHAT, json=chat_body(stream=True), headers={"x-sim": "tokens=20"})
    assert r.status_code == 200
    assert r.content.endswith(b"data: [DONE]\n\n"), r.content[-300:]


# ---- retries ------------------------------------------------------------------

def test_failing_node_is_retried_on_a_healthy_one(procs):
    bad, good = procs.sim(fast=True, error_rate=1), procs.sim(fast=True)
    lx = procs.llmux([bad, good])
    for i in range(20):
        r = lx.client.post(CHAT, json=chat_body(content="retry %d" % i, max_tokens=2))
        assert r.status_code == 200, r.text
        assert r.headers["x-routed-node"] == good.url
        assert r.json()["object"] == "chat.completion"
    assert good.stats()["requests_total"] == 20
    assert bad.stats()["requests_total"] >= 1, "the failing node was never tried"


def test_without_retries_the_nodes_500_is_passed_through(procs):
    bad, good = procs.sim(fast=True, error_rate=1), procs.sim(fast=True)
    lx = procs.llmux([bad, good], env={"MAX_RETRIES": "0"})
    body = json.dumps(chat_body(content="no retry", max_tokens=2)).encode()
    direct = bad.client.post(CHAT, content=body)
    assert direct.status_code == 500
    statuses = {200: 0, 500: 0}
    for i in range(20):
        r = lx.client.post(CHAT, content=body)
        assert r.status_code in statuses, r.text
        statuses[r.status_code] += 1
        if r.status_code == 500:
            assert r.headers["x-routed-node"] == bad.url
            assert r.json() == node_error_as_openai(direct)
            assert r.headers["content-type"] == "application/json"
        else:
            assert r.headers["x-routed-node"] == good.url
    # Nothing is retried: every request the bad node got failed. (How many
    # it gets depends on passive ejection; at least the first one.)
    assert statuses[500] >= 1, statuses
    assert bad.stats()["requests_total"] == 1 + statuses[500]
    assert good.stats()["requests_total"] == statuses[200]


@pytest.mark.parametrize("status", [429, 500, 502, 503, 504])
def test_retryable_status_is_retried_up_to_max_retries(procs, status):
    sims = [procs.sim(fast=True) for _ in range(4)]
    lx = procs.llmux(sims, env={"MAX_RETRIES": "2"})
    hdr = {"x-sim": "status=%d" % status}
    direct = sims[0].client.post(CHAT, content=BODY, headers=hdr)
    assert direct.status_code == status
    r = lx.client.post(CHAT, content=BODY, headers=hdr)
    # Every attempt fails the same way: the last node's answer is passed on
    # (in OpenAI's error shape).
    assert r.status_code == status, r.text
    assert r.json() == node_error_as_openai(direct)
    counts = [s.stats()["requests_total"] for s in sims]
    assert sum(counts) == 1 + 3, counts  # the direct one, then 1 try + 2 retries
    assert max(counts[1:]) <= 1 and counts[0] <= 2, "a node was tried twice: %r" % counts
    assert r.headers["x-routed-node"] in {s.url for s in sims}


@pytest.mark.parametrize("status", [400, 401, 403, 404, 409, 413, 422])
def test_other_4xx_is_passed_through_and_not_retried(procs, status):
    sims = [procs.sim(fast=True), procs.sim(fast=True)]
    lx = procs.llmux(sims)
    hdr = {"x-sim": "status=%d" % status}
    direct = sims[0].client.post(CHAT, content=BODY, headers=hdr)
    assert direct.status_code == status
    r = lx.client.post(CHAT, content=BODY, headers=hdr)
    assert r.status_code == status, r.text
    assert r.json() == node_error_as_openai(direct)
    assert r.headers["content-type"] == "application/json"
    assert r.headers["x-request-id"]
    # One attempt only: the direct request plus exactly one from llmux, on
    # the node named in X-Routed-Node.
    via = [s.stats()["requests_total"] - (1 if s is sims[0] else 0) for s in sims]
    assert sorted(via) == [0, 1], via
    assert r.headers["x-routed-node"] == sims[via.index(1)].url


def test_retry_status_from_python_node(procs):
    """Exact accounting with a node that always answers 503."""
    def refuse(conn, req):
        conn.send(http_response(503, b'{"error":"busy"}', reason="Service Unavailable"))
        return True
    bad = procs.pynode(refuse)
    good = procs.pynode()
    lx = procs.llmux([bad, good], env={"MAX_RETRIES": "1"})
    for i in range(10):
        r = lx.client.post(CHAT, content=BODY)
        assert r.status_code == 200, r.text
        assert r.headers["x-routed-node"] == good.url
    assert len(good.posts) == 10
    assert 1 <= len(bad.posts) <= 10


def test_dying_node_fails_over(procs):
    dying = procs.sim(fast=True, die_after=3)
    dying.expect_rc = 1
    ok = procs.sim(fast=True)
    lx = procs.llmux([dying, ok])
    for i in range(20):
        r = lx.client.post(CHAT, json=chat_body(content="d %d" % i, max_tokens=2))
        assert r.status_code == 200, (i, r.text)
    assert dying.wait(T(10)) == 1, dying.describe()
    dying.stopped = True


# ---- protocol-level node failures -----------------------------------------------

def close_at_once(conn):
    conn.sock.close()


def send_garbage(conn):
    conn.read_until(b"\r\n\r\n")
    conn.send(b"SSH-2.0-OpenSSH_9.2\r\n\r\n")


def close_after_half_a_head(conn):
    conn.read_until(b"\r\n\r\n")
    conn.send(b"HTTP/1.1 200 OK\r\nContent-Type: appli")


def reset_connection(conn):
    import struct
    conn.read_until(b"\r\n\r\n")
    conn.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    conn.sock.close()


def huge_head(conn):
    conn.read_until(b"\r\n\r\n")
    conn.send(b"HTTP/1.1 200 OK\r\n" + b"X-Junk: " + b"j" * (200 * 1024) + b"\r\n\r\n")


@pytest.mark.parametrize("behaviour", [close_at_once, send_garbage, close_after_half_a_head,
                                       reset_connection, huge_head])
def test_protocol_failure_of_the_only_node_is_502(procs, behaviour):
    node = procs.pynode(on_connect=behaviour)
    lx = procs.llmux([node], env={"NODE_TIMEOUT_SECONDS": "5"})
    r = lx.new_client(timeout=T(20)).post(CHAT, content=BODY)
    assert r.status_code == 502, r.text
    assert_openai_error(r.json())
    assert r.headers["x-routed-node"] == node.url
    assert lx.client.get("/health").status_code == 200


@pytest.mark.parametrize("behaviour", [close_at_once, send_garbage, close_after_half_a_head,
                                       reset_connection])
def test_protocol_failure_fails_over(procs, behaviour):
    node = procs.pynode(on_connect=behaviour)
    good = procs.pynode()
    lx = procs.llmux([node, good], env={"NODE_TIMEOUT_SECONDS": "5"})
    for i in range(4):
        r = lx.client.post(CHAT, content=BODY)
        assert r.status_code == 200, r.text
        assert r.headers["x-routed-node"] == good.url
    assert len(good.posts) == 4


def test_node_closing_after_each_answer_is_not_an_error(procs):
    """A node may close a keep-alive connection at any time (no Connection:
    close sent): llmux must not fail the next request on that stale socket."""
    def once(conn, req):
        conn.send(http_response(200, b'{"ok":1}'))
        time.sleep(0.02)
        return False  # close after the answer
    node = procs.pynode(once)
    lx = procs.llmux([node], workers=1, env={"MAX_RETRIES": "0"})
    for i in range(10):
        r = lx.client.post(CHAT, content=BODY)
        assert r.status_code == 200, (i, r.text)
        assert r.content == b'{"ok":1}'
        time.sleep(0.05)


def test_node_connection_close_header_is_honoured(procs):
    def closing(conn, req):
        conn.send(http_response(200, b'{"ok":2}', headers=[("Connection", "close")]))
        return False
    node = procs.pynode(closing)
    lx = procs.llmux([node], workers=1, env={"MAX_RETRIES": "0"})
    for i in range(10):
        r = lx.client.post(CHAT, content=BODY)
        assert r.status_code == 200, (i, r.text)
    posts = node.posts
    assert len(posts) == 10
    assert len({p.conn_index for p in posts}) == 10, "a closed connection was reused"


def test_node_response_without_length_is_read_to_close(procs):
    def http10(conn, req):
        conn.send(b"HTTP/1.0 200 OK\r\nContent-Type: application/json\r\n\r\n{\"old\":true}")
        return False
    node = procs.pynode(http10)
    lx = procs.llmux([node])
    r = lx.client.post(CHAT, content=BODY)
    assert r.status_code == 200, r.text
    assert r.content == b'{"old":true}'
