"""
HTTP/1.1 server details, on raw sockets: pipelining, chunked request bodies,
Expect: 100-continue, head limits and timeouts, HTTP/1.0, keep-alive, and the
headers llmux adds, keeps or drops. The node is an in-process echo node that
reports what llmux forwarded.
"""
import hashlib
import json
import time

import pytest

from conftest import T
from e2e_nodes import http_response
from e2e_util import RawConn, assert_openai_error, chat_body, raw_request

CHAT = "/v1/chat/completions"
BODY = json.dumps(chat_body()).encode()


@pytest.fixture
def echo(procs):
    node = procs.pynode()
    lx = procs.llmux([node])
    return node, lx


def test_pipelined_requests_are_answered_in_order(echo):
    node, lx = echo
    reqs = []
    for i in range(6):
        if i % 3 == 1:
            reqs.append(raw_request("GET", "/health", headers=[("X-Request-Id", "pipe-%d" % i)]))
        elif i % 3 == 2:
            reqs.append(raw_request("POST", "/v1/completions",
                                    json.dumps({"model": "m", "prompt": "p%d" % i}).encode(),
                                    headers=[("X-Request-Id", "pipe-%d" % i)]))
        else:
            reqs.append(raw_request("POST", CHAT, BODY, headers=[("X-Request-Id", "pipe-%d" % i)]))
    c = RawConn(lx.port, timeout=T(20))
    try:
        c.send(b"".join(reqs))  # one write: all six requests pipelined
        for i in range(6):
            r = c.read_response()
            assert r.status == 200, r
            assert r.header("x-request-id") == "pipe-%d" % i, r
            if i % 3 == 1:
                assert "nodes" in r.json()
            else:
                got = r.json()
                assert got["target"] == ("/v1/completions" if i % 3 == 2 else CHAT)
        assert not c.buf, "extra bytes after the last response: %r" % c.buf
    finally:
        c.close()
    # The node saw the four proxied requests, in order.
    assert [rq.header("x-request-id") for rq in node.posts] == \
        ["pipe-0", "pipe-2", "pipe-3", "pipe-5"]


def test_pipelined_errors_and_successes_keep_their_order(echo):
    _, lx = echo
    data = (raw_request("POST", CHAT, b"not json", headers=[("X-Request-Id", "p-a")]) +
            raw_request("POST", CHAT, BODY, headers=[("X-Request-Id", "p-b")]) +
            raw_request("GET", "/nope", headers=[("X-Request-Id", "p-c")]) +
            raw_request("POST", CHAT, BODY, headers=[("X-Request-Id", "p-d")]))
    c = RawConn(lx.port, timeout=T(20))
    try:
        # Dribble the bytes in small pieces: request boundaries fall anywhere.
        for i in range(0, len(data), 37):
            c.send(data[i:i + 37])
        got = [c.read_response() for _ in range(4)]
    finally:
        c.close()
    assert [(r.status, r.header("x-request-id")) for r in got] == \
        [(400, "p-a"), (200, "p-b"), (404, "p-c"), (200, "p-d")], got


def test_chunked_request_body_is_accepted_and_forwarded_whole(echo):
    node, lx = echo
    body = json.dumps(chat_body(content="chunky " * 500)).encode()
    parts = [body[:10], body[10:1000], body[1000:]]
    chunked = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in parts) + b"0\r\n\r\n"
    head = ("POST %s HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            "Transfer-Encoding: chunked\r\n\r\n" % CHAT).encode()
    c = RawConn(lx.port, timeout=T(20))
    try:
        c.send(head)
        for i in range(0, len(chunked), 500):
            c.send(chunked[i:i + 500])
            time.sleep(0.005)
        r = c.read_response()
    finally:
        c.close()
    assert r.status == 200, r
    got = r.json()
    assert got["body_len"] == len(body)
    assert got["body_sha256"] == hashlib.sha256(body).hexdigest()
    fwd = node.posts[-1]
    assert fwd.header("content-length") == str(len(body))
    assert fwd.header("transfer-encoding") is None


def test_expect_100_continue_is_honoured(echo):
    node, lx = echo
    head = ("POST %s HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            "Content-Length: %d\r\nExpect: 100-continue\r\n\r\n" % (CHAT, len(BODY))).encode()
    c = RawConn(lx.port, timeout=T(10))
    try:
        c.send(head)
        # The interim answer must come before we send any body byte.
        interim = c.read_response()
        assert interim.status == 100, interim
        c.send(BODY)
        r = c.read_response()
    finally:
        c.close()
    assert r.status == 200, r
    assert r.json()["body_sha256"] == hashlib.sha256(BODY).hexdigest()
    # Expect is hop-by-hop: the node must not be asked to send 100 again.
    assert node.posts[-1].header("expect") is None


def test_head_too_large_is_431(echo):
    _, lx = echo
    c = RawConn(lx.port, timeout=T(10))
    try:
        c.send(raw_request("POST", CHAT, BODY, headers=[("X-Big", "a" * (100 * 1024))]))
        r = c.read_response()
        assert r.status == 431, r
        assert_openai_error(r.json())
        assert c.is_closed_by_peer(T(10)), "connection kept open after 431"
    finally:
        c.close()


def test_head_limit_follows_max_header_bytes(procs):
    node = procs.pynode()
    lx = procs.llmux([node], env={"MAX_HEADER_BYTES": "4096"})
    ok = lx.client.post(CHAT, content=BODY, headers={"X-Pad": "b" * 2000})
    assert ok.status_code == 200, ok.text
    r = lx.new_client().post(CHAT, content=BODY, headers={"X-Pad": "b" * 8000})
    assert r.status_code == 431, r.text


def test_too_many_header_lines_is_431(echo):
    _, lx = echo
    hdrs = [("X-H%d" % i, "v") for i in range(600)]
    c = RawConn(lx.port, timeout=T(10))
    try:
        c.send(raw_request("POST", CHAT, BODY, headers=hdrs))
        r = c.read_response()
        assert r.status == 431, r
    finally:
        c.close()


def test_partial_head_times_out_with_408(procs):
    node = procs.pynode()
    lx = procs.llmux([node], env={"REQUEST_TIMEOUT_SECONDS": "1"})
    c = RawConn(lx.port, timeout=T(15))
    try:
        t0 = time.monotonic()
        c.send(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Le")
        r = c.read_response()
        elapsed = time.monotonic() - t0
        assert r.status == 408, r
        assert_openai_error(r.json())
        assert elapsed >= 0.8, "408 after %.2f s, before the 1 s timeout" % elapsed
        assert c.is_closed_by_peer(T(10)), "connection kept open after 408"
    finally:
        c.close()
    assert node.posts == [], "a timed-out request reached the node"


def test_partial_body_times_out_with_408(procs):
    node = procs.pynode()
    lx = procs.llmux([node], env={"REQUEST_TIMEOUT_SECONDS": "1"})
    c = RawConn(lx.port, timeout=T(15))
    try:
        c.send(raw_request("POST", CHAT, headers=[("Content-Length", "500")]) + b'{"model":')
        r = c.read_response()
        assert r.status == 408, r
    finally:
        c.close()
    assert node.posts == []


def test_idle_keepalive_connection_is_closed(procs):
    node = procs.pynode()
    lx = procs.llmux([node], env={"KEEPALIVE_TIMEOUT_SECONDS": "1"})
    c = RawConn(lx.port, timeout=T(15))
    try:
        c.send(raw_request("GET", "/health"))
        assert c.read_response().status == 200
        assert c.is_closed_by_peer(T(10)), "idle connection not closed"
        assert c.buf == b"", "bytes sent on an idle close: %r" % c.buf
    finally:
        c.close()


def test_http10_request_is_answered_and_closed(echo):
    _, lx = echo
    c = RawConn(lx.port, timeout=T(10))
    try:
        c.send(raw_request("POST", CHAT, BODY, version="HTTP/1.0"))
        r = c.read_response()
        assert r.status == 200, r
        assert r.version.startswith("HTTP/1."), r.version
        assert r.header("transfer-encoding") is None, "chunked sent to an HTTP/1.0 client"
        assert r.json()["body_sha256"] == hashlib.sha256(BODY).hexdigest()
        assert c.is_closed_by_peer(T(10)), "HTTP/1.0 connection without keep-alive kept open"
    finally:
        c.close()


def test_http10_keepalive_is_honoured(echo):
    _, lx = echo
    c = RawConn(lx.port, timeout=T(10))
    try:
        for i in range(3):
            c.send(raw_request("POST", CHAT, BODY, version="HTTP/1.0",
                               headers=[("Connection", "keep-alive"),
                                        ("X-Request-Id", "ten-%d" % i)]))
            r = c.read_response()
            assert r.status == 200, r
            assert r.header("x-request-id") == "ten-%d" % i
            assert (r.header("connection") or "").lower() == "keep-alive", r
    finally:
        c.close()


def test_connection_close_is_honoured(echo):
    _, lx = echo
    c = RawConn(lx.port, timeout=T(10))
    try:
        c.send(raw_request("POST", CHAT, BODY, headers=[("Connection", "close")]))
        r = c.read_response()
        assert r.status == 200, r
        assert (r.header("connection") or "").lower() == "close", r
        assert c.is_closed_by_peer(T(10))
    finally:
        c.close()


def test_keepalive_serves_many_requests_on_one_connection(echo):
    node, lx = echo
    c = RawConn(lx.port, timeout=T(10))
    try:
        for i in range(20):
            c.send(raw_request("POST", CHAT, BODY, headers=[("X-Request-Id", "ka-%d" % i)]))
            r = c.read_response()
            assert r.status == 200 and r.header("x-request-id") == "ka-%d" % i, r
    finally:
        c.close()
    assert len(node.posts) == 20


@pytest.mark.parametrize("data", [
    b"THIS IS NOT HTTP\r\n\r\n",
    b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n",
    b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"zz\r\nhello\r\n0\r\n\r\n",
    b"GET / HTTP/1.1\r\nBad Header Line\r\n\r\n",
])
def test_malformed_request_is_400_and_closed(echo, data):
    node, lx = echo
    c = RawConn(lx.port, timeout=T(10))
    try:
        c.send(data)
        r = c.read_response()
        assert r.status == 400, r
        assert_openai_error(r.json())
        assert c.is_closed_by_peer(T(10))
    finally:
        c.close()
    assert node.posts == [], "a malformed request reached the node"


def test_unknown_path_and_wrong_method(echo):
    _, lx = echo
    r = lx.client.get("/v2/whatever")
    assert r.status_code == 404, r.text
    assert_openai_error(r.json())
    assert r.headers["content-type"].startswith("application/json")
    r = lx.client.get(CHAT)
    assert r.status_code == 405, r.text
    assert_openai_error(r.json())
    r = lx.client.post("/v1/models", content=b"{}")
    assert r.status_code == 405, r.text


# ---- request ids ------------------------------------------------------------

@pytest.mark.parametrize("rid", ["abc-DEF_123.x:y", "k" * 64, "7"], ids=["mixed", "64", "1"])
def test_client_request_id_is_kept_and_forwarded(echo, rid):
    node, lx = echo
    r = lx.client.post(CHAT, content=BODY, headers={"X-Request-Id": rid})
    assert r.status_code == 200
    assert r.headers["x-request-id"] == rid
    assert node.posts[-1].header_all("x-request-id") == [rid]


@pytest.mark.parametrize("bad", ["a" * 65, "has space", "slash/inside", "semi;colon", "ümlaut"])
def test_unsafe_request_id_is_replaced(echo, bad):
    node, lx = echo
    c = RawConn(lx.port, timeout=T(10))
    try:
        c.send(raw_request("POST", CHAT, BODY,
                           headers=[("X-Request-Id", bad.encode().decode("latin-1"))]))
        r = c.read_response()
    finally:
        c.close()
    assert r.status == 200, r
    rid = r.header("x-request-id")
    assert rid and rid != bad.encode().decode("latin-1"), rid
    assert all(ch.isalnum() or ch in "._:-" for ch in rid) and len(rid) <= 64, rid
    assert node.posts[-1].header_all("x-request-id") == [rid]


def test_generated_request_ids_are_unique_and_forwarded(echo):
    node, lx = echo
    ids = []
    for _ in range(20):
        r = lx.client.post(CHAT, content=BODY)
        assert r.status_code == 200
        ids.append(r.headers["x-request-id"])
    assert len(set(ids)) == 20, ids
    assert [rq.header("x-request-id") for rq in node.posts] == ids


def test_request_id_on_gateway_errors(procs):
    node = procs.pynode()
    lx = procs.llmux([node], args=["--auth-token", "tok", "--model", "m1"])
    r = lx.client.post(CHAT, content=BODY, headers={"X-Request-Id": "err-1"})
    assert r.status_code == 401 and r.headers["x-request-id"] == "err-1"
    r = lx.client.post(CHAT, json=chat_body(model="m2"),
                       headers={"X-Request-Id": "err-2", "Authorization": "Bearer tok"})
    assert r.status_code == 404 and r.headers["x-request-id"] == "err-2"
    r = lx.client.post(CHAT, content=b"[]",
                       headers={"X-Request-Id": "err-3", "Authorization": "Bearer tok"})
    assert r.status_code == 400 and r.headers["x-request-id"] == "err-3"
    r = lx.client.post(CHAT, content=b"[]",
                       headers={"Authorization": "Bearer tok"})
    assert r.headers.get("x-request-id"), "no generated id on an error"


# ---- forwarded headers -------------------------------------------------------

def test_client_authorization_is_not_forwarded(procs):
    node = procs.pynode()
    lx = procs.llmux([node], env={"AUTH_TOKEN": "client-token"})
    r = lx.client.post(CHAT, content=BODY, headers={"Authorization": "Bearer client-token"})
    assert r.status_code == 200, r.text
    fwd = node.posts[-1]
    assert fwd.header("authorization") is None, fwd.headers


def test_client_authorization_is_not_forwarded_without_auth(echo):
    node, lx = echo
    r = lx.client.post(CHAT, content=BODY,
                       headers={"Authorization": "Bearer some-client-key",
                                "Proxy-Authorization": "Basic eA=="})
    assert r.status_code == 200, r.text
    fwd = node.posts[-1]
    assert fwd.header("authorization") is None, fwd.headers
    assert fwd.header("proxy-authorization") is None, fwd.headers


def test_server_api_key_replaces_client_authorization(procs):
    node = procs.pynode()
    cfg = procs.tmp / "c.json"
    cfg.write_text(json.dumps({"models": {"m1": {"servers": [
        {"url": node.url, "api_key": "node-secret"}]}}}))
    lx = procs.llmux(args=["--config", str(cfg)], env={"AUTH_TOKEN": "client-token"})
    r = lx.client.post(CHAT, json=chat_body(model="m1"),
                       headers={"Authorization": "Bearer client-token"})
    assert r.status_code == 200, r.text
    assert node.posts[-1].header_all("authorization") == ["Bearer node-secret"]


def test_hop_by_hop_headers_dropped_end_to_end_kept(echo):
    node, lx = echo
    c = RawConn(lx.port, timeout=T(10))
    try:
        c.send(raw_request("POST", CHAT, BODY, headers=[
            ("Connection", "keep-alive"), ("Keep-Alive", "timeout=5"), ("TE", "trailers"),
            ("Upgrade", "websocket"), ("X-Custom", "kept"), ("User-Agent", "e2e/1"),
            ("Accept", "application/json")]))
        r = c.read_response()
    finally:
        c.close()
    assert r.status == 200, r
    fwd = node.posts[-1]
    for h in ("keep-alive", "te", "upgrade"):
        assert fwd.header(h) is None, (h, fwd.headers)
    assert fwd.header("x-custom") == "kept"
    assert fwd.header("user-agent") == "e2e/1"
    assert fwd.header("accept") == "application/json"
    assert fwd.header_all("host") == ["127.0.0.1:%d" % node.port], fwd.headers
    assert fwd.header_all("content-length") == [str(len(BODY))]
    assert fwd.method == "POST" and fwd.target == CHAT
    assert fwd.version == "HTTP/1.1"


def test_node_cannot_spoof_gateway_headers(procs):
    def handler(conn, req):
        conn.send(http_response(200, b'{"ok":true}', headers=[
            ("X-Routed-Node", "evil"), ("X-Request-Id", "evil-id"), ("X-Node-Header", "kept")]))
        return True
    node = procs.pynode(handler)
    lx = procs.llmux([node])
    r = lx.client.post(CHAT, content=BODY, headers={"X-Request-Id": "mine"})
    assert r.status_code == 200
    assert r.headers.get_list("x-routed-node") == [node.url]
    assert r.headers.get_list("x-request-id") == ["mine"]
    assert r.headers["x-node-header"] == "kept"
    assert r.content == b'{"ok":true}'


def test_query_string_is_forwarded(echo):
    node, lx = echo
    r = lx.client.post(CHAT + "?api-version=1&x=y", content=BODY)
    assert r.status_code == 200, r.text
    assert node.posts[-1].target == CHAT + "?api-version=1&x=y"


@pytest.mark.parametrize("bad_line", [b"Content-Length : %d", b"X-Foo : bar"],
                         ids=["content-length", "x-foo"])
def test_whitespace_before_header_colon_is_rejected(echo, bad_line):
    """RFC 9112 5.1: a server MUST reject a request with whitespace between
    a field name and the colon (400). Forwarding it lets a proxy and a node
    disagree about the header (request smuggling)."""
    node, lx = echo
    line = bad_line % len(BODY) if b"%d" in bad_line else bad_line
    cl = b"" if b"Content-Length" in line else b"Content-Length: %d\r\n" % len(BODY)
    c = RawConn(lx.port, timeout=T(10))
    try:
        c.send(b"POST " + CHAT.encode() + b" HTTP/1.1\r\nHost: x\r\n" + line + b"\r\n" + cl +
               b"\r\n" + BODY)
        r = c.read_response()
    finally:
        c.close()
    assert node.posts == [], "answered %d; forwarded to the node as %r" % (
        r.status, node.posts[0].raw_head)
    assert r.status == 400, r


def test_absolute_form_request_target_is_accepted(echo):
    """RFC 9112 3.2.2: a server MUST accept the absolute-form of the target."""
    node, lx = echo
    c = RawConn(lx.port, timeout=T(10))
    try:
        c.send(raw_request("POST", "http://127.0.0.1:%d%s" % (lx.port, CHAT), BODY))
        r = c.read_response()
    finally:
        c.close()
    assert r.status == 200, r
    assert node.posts and node.posts[-1].target == CHAT


def test_expect_100_continue_with_a_body_over_the_limit_is_413_at_once(procs):
    node = procs.pynode()
    lx = procs.llmux([node], env={"MAX_BODY_BYTES": "1000"})
    c = RawConn(lx.port, timeout=T(10))
    try:
        c.send(("POST %s HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n"
                "Expect: 100-continue\r\n\r\n" % CHAT).encode())
        r = c.read_response()  # without sending the body
    finally:
        c.close()
    assert r.status == 413, r
    assert node.posts == []
