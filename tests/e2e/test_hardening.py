"""
Regression tests for the security and robustness review (findings H1-H4,
D1-D5 and the lower-severity ones), and for llmux-sim's keep-alive timer.

Each test names its finding in its docstring and asserts the fixed
behaviour; every one ends by checking that llmux is still alive and answers
a normal request. All sockets have timeouts and every loop a bound, so a
server that hangs makes a test fail, never stall.
"""
import collections
import concurrent.futures as cf
import json
import os
import re
import resource
import select
import socket
import subprocess
import threading
import time

import httpx
import pytest

from conftest import SLOW, T, bin_path, clean_env
from e2e_nodes import echo_handler, http_response
from e2e_util import RawConn, assert_openai_error, chat_body, raw_request, wait_for

CHAT = "/v1/chat/completions"
BODY = json.dumps(chat_body(model="m")).encode()
RSS_LIMIT_MIB = 64  # llmux starts at a few MiB


# ---- helpers -----------------------------------------------------------------

def rss_mib(pid):
    """Resident set size of <pid> in MiB (VmRSS in /proc/<pid>/status)."""
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    raise AssertionError("no VmRSS for pid %d" % pid)


def rss_limit_mib(pid):
    """The RSS bound of the memory tests: 64 MiB, or 64 MiB over the start
    under a sanitizer build (shadow memory)."""
    return RSS_LIMIT_MIB + (rss_mib(pid) if SLOW > 1 else 0)


def assert_serves(lx):
    """llmux is alive and answers GET /health on a fresh connection."""
    assert lx.alive(), "llmux died\n%s" % lx.describe()
    with lx.new_client(timeout=T(10)) as c:
        r = c.get("/health")
    assert r.status_code == 200, r.text


def dechunk(data):
    """Decodes a complete chunked body; returns (body, rest after the end).
    Raises AssertionError when the body is not properly terminated."""
    body = b""
    pos = 0
    while True:
        eol = data.find(b"\r\n", pos)
        assert eol >= 0, "chunked body cut inside a size line: %r" % data[-200:]
        size = int(data[pos:eol].split(b";")[0], 16)
        pos = eol + 2
        if size == 0:
            assert data[pos:pos + 2] == b"\r\n", "no CRLF after the last chunk: %r" % data[pos:]
            return body, data[pos + 2:]
        assert len(data) >= pos + size + 2, "chunked body cut inside a chunk (%d bytes)" % len(data)
        body += data[pos:pos + size]
        assert data[pos + size:pos + size + 2] == b"\r\n", "chunk not followed by CRLF"
        pos += size + 2


def metric(lx, name):
    """The value of an unlabelled sample of GET /metrics."""
    with lx.new_client(timeout=T(10)) as c:
        r = c.get("/metrics")
    assert r.status_code == 200, r.text
    for line in r.text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError("no %s in /metrics" % name)


def wait_active_requests(lx, want, timeout):
    return wait_for(lambda: metric(lx, "llmux_active_requests") == want, timeout,
                    interval=0.05, what="llmux_active_requests == %d" % want)


def read_response_within(c, seconds, what="response"):
    """Reads one response from RawConn <c>; fails (instead of hanging) when
    none arrives within <seconds>."""
    c.sock.settimeout(seconds)
    t0 = time.monotonic()
    try:
        r = c.read_response()
    except socket.timeout:
        raise AssertionError("no %s within %.1f s (buffered: %r)"
                             % (what, seconds, c.buf[:200])) from None
    return r, time.monotonic() - t0


def holds_connection(pid, server_port, client_port):
    """True while process <pid> still has a descriptor for the server side of
    the TCP connection 127.0.0.1:<client_port> -> <server_port>."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                lines = f.readlines()[1:]
        except OSError:
            continue
        for line in lines:
            parts = line.split()
            lport = int(parts[1].rsplit(":", 1)[1], 16)
            rport = int(parts[2].rsplit(":", 1)[1], 16)
            if lport == server_port and rport == client_port and parts[9] != "0":
                inodes.add("socket:[%s]" % parts[9])
    if not inodes:
        return False
    fd_dir = "/proc/%d/fd" % pid
    for fd in os.listdir(fd_dir):
        try:
            if os.readlink(os.path.join(fd_dir, fd)) in inodes:
                return True
        except OSError:
            pass
    return False


def sse_head():
    return (b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n")


def chunk(data):
    return b"%x\r\n%s\r\n" % (len(data), data)


def stream_body(content="Hello", **extra):
    return json.dumps(chat_body(content=content, model="m", stream=True, **extra)).encode()


# ---- llmux-sim ---------------------------------------------------------------

def test_sim_stream_survives_a_reader_pause_longer_than_keep_alive(procs):
    """llmux-sim: the keep-alive idle timer must not run while a response is
    still being written. A streamed answer larger than the socket buffers,
    read by a client that pauses longer than --keep-alive-ms, must still end
    with `data: [DONE]` and the final chunk (it was cut off when the idle
    timer fired after the sim had handed the last bytes to libuv)."""
    sim = procs.sim(fast=True, keep_alive_ms=300)
    body = json.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}],
                       "stream": True, "max_tokens": 20000}).encode()
    c = RawConn(sim.port, timeout=T(10), rcvbuf=4096)  # the stream backs up in the sim
    try:
        c.send(("POST %s HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                "Content-Length: %d\r\n\r\n" % (CHAT, len(body))).encode() + body)
        _, status, _, headers = c.read_head()
        assert status == 200
        while b"data:" not in c.buf:
            c._more()
        time.sleep(1.0)  # the pause: > 3 x keep-alive-ms
        deadline = time.monotonic() + T(20)
        while not c.buf.endswith(b"\r\n0\r\n\r\n"):
            assert time.monotonic() < deadline, "stream not finished after %.0f s" % T(20)
            try:
                c._more()
            except (EOFError, ConnectionResetError):
                break
        events, rest = dechunk(c.buf)
        assert rest == b""
        assert events.endswith(b"data: [DONE]\n\n"), events[-300:]
        # The idle timer runs again once the answer has left: the connection
        # is then closed as an idle keep-alive one.
        c.buf = b""
        assert c.is_closed_by_peer(T(5)), "idle connection not closed after the stream"
    finally:
        c.close()
    assert sim.alive()


# ---- H1: chunked request trailers ---------------------------------------------

def trailer_request(body, trailer_lines, extra_headers=()):
    """A chunked POST whose last chunk is followed by <trailer_lines>."""
    head = "POST %s HTTP/1.1\r\nHost: x\r\n" % CHAT
    for k, v in extra_headers:
        head += "%s: %s\r\n" % (k, v)
    head += "Transfer-Encoding: chunked\r\n\r\n"
    data = chunk(body[:20]) + chunk(body[20:]) + b"0\r\n"
    for line in trailer_lines:
        data += line + b"\r\n"
    return head.encode() + data + b"\r\n"


def trailer_line(name, size):
    prefix = name.encode() + b": "
    return prefix + b"t" * (size - len(prefix))


def test_h1_chunked_trailers_are_not_forwarded_and_do_not_corrupt_the_head(procs):
    """H1: trailer fields after the last chunk (a 600-byte line and 40 of 300
    bytes) were parsed as header fields of the finished head, reallocating
    the header store the request already pointed into (heap use-after-free
    before auth). The request must be relayed with the head's headers intact
    and no trailer field forwarded. (Certain under ASan; a release build
    shows it as a hang, a crash or corrupt headers, nearly always within
    these 13 requests.)"""
    node = procs.pynode()
    lx = procs.llmux([node], workers=1)
    body = json.dumps(chat_body(model="m", content="trailers")).encode()
    head_headers = [("Content-Type", "application/json"), ("X-Custom", "abc")] + \
        [("X-Head-%02d" % i, "value-%02d" % i) for i in range(20)]
    trailers = [trailer_line("X-Trailer-Big", 600)] + \
        [trailer_line("X-Trailer-%02d" % i, 300) for i in range(40)]

    def check(c):
        c.send(trailer_request(body, trailers, head_headers))
        r, _ = read_response_within(c, T(5))
        assert r.status == 200, r
        fwd = node.posts[-1]
        names = [k.lower() for k, _ in fwd.headers]
        assert not [n for n in names if n.startswith("x-trailer")], fwd.headers
        assert fwd.header_all("x-custom") == ["abc"], fwd.headers
        for k, v in head_headers[2:]:
            assert fwd.header_all(k) == [v], (k, fwd.headers)
        assert fwd.body == body

    # Fresh connections (a new header store each) and then one keep-alive
    # connection (the store grown by the first request is reused): the
    # freed memory is reused in different ways, which a release build
    # (without ASan) shows as corrupt headers, a hang or a crash.
    for _ in range(10):
        c = RawConn(lx.port, timeout=T(10))
        try:
            check(c)
        finally:
            c.close()
    c = RawConn(lx.port, timeout=T(10))
    try:
        for _ in range(3):
            check(c)
    finally:
        c.close()
    assert_serves(lx)


def test_h1_trailers_count_against_max_header_bytes(procs):
    """H1: head plus trailers over --max-header-bytes is 431, like a head
    that is too large."""
    node = procs.pynode()
    lx = procs.llmux([node], args=["--max-header-bytes", "4096"])
    body = json.dumps(chat_body(model="m")).encode()
    trailers = [trailer_line("X-Trailer-%02d" % i, 300) for i in range(68)]  # ~20 KB
    c = RawConn(lx.port, timeout=T(10))
    try:
        c.send(trailer_request(body, trailers))
        r, _ = read_response_within(c, T(10))
    finally:
        c.close()
    assert r.status == 431, r
    assert node.posts == []
    assert_serves(lx)


# ---- H2: pipelined requests from a client that never reads ---------------------

def test_h2_pipelining_client_that_never_reads_does_not_grow_memory(procs):
    """H2: a client pipelining GET /health without ever reading made llmux
    queue every response in memory (GBs). llmux must stop reading from a
    connection whose output backs up: its RSS stays under 64 MiB."""
    node = procs.pynode()
    lx = procs.llmux([node])
    batch = b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n" * 500
    limit = rss_limit_mib(lx.pid)
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    peak = rss_mib(lx.pid)
    sent = 0
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.settimeout(T(5))
        s.connect(("127.0.0.1", lx.port))
        s.setblocking(False)
        pending = b""
        end = time.monotonic() + 3.0
        blocked_since = None
        while time.monotonic() < end and peak < limit:
            _, writable, _ = select.select([], [s], [], 0.1)
            peak = max(peak, rss_mib(lx.pid))
            if not writable:
                # The socket takes no more: llmux stopped reading.
                blocked_since = blocked_since or time.monotonic()
                if time.monotonic() - blocked_since >= 1.0:
                    break
                continue
            blocked_since = None
            if not pending:
                pending = batch
            try:
                n = s.send(pending)
            except BlockingIOError:
                continue
            except OSError:
                break  # closed by llmux: fine
            pending = pending[n:]
            sent += n
        peak = max(peak, rss_mib(lx.pid))
    finally:
        s.close()
    assert peak < limit, "llmux RSS reached %.0f MiB after %d bytes of unread " \
        "pipelined requests" % (peak, sent)
    assert_serves(lx)


# ---- H3: 1xx answers from a node ----------------------------------------------

@pytest.mark.parametrize("answer, then", [
    (b"HTTP/1.1 100 Continue\r\nContent-Length: 1\r\n\r\nX", "close"),
    (b"HTTP/1.1 100 Continue\r\nContent-Length: 1\r\n\r\nX", "stall"),
    (b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
     "close"),
    (b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
     "stall"),
], ids=["100-with-body-close", "100-with-body-stall", "101-close", "101-stall"])
def test_h3_node_1xx_with_a_body_or_101_is_502(procs, answer, then):
    """H3: a node answering `100 Continue` with a body, or `101 Switching
    Protocols`, is a protocol error: the client gets 502 with an OpenAI
    error, and llmux lives on."""
    def handler(conn, req):
        conn.send(answer)
        if then == "stall":
            node.stopping.wait(T(15))
        return False
    node = procs.pynode(handler)
    lx = procs.llmux([node], args=["--max-retries", "0", "--node-timeout", "5"])
    with lx.new_client(timeout=T(15)) as c:
        r = c.post(CHAT, content=BODY)
    assert r.status_code == 502, (r.status_code, r.text)
    assert_openai_error(r.json())
    assert_serves(lx)


# ---- H4: node answers before it has read the request body -----------------------

DENIED = b'{"error":{"message":"denied","type":"authentication_error"}}'


def test_h4_node_that_answers_before_reading_the_body(procs):
    """H4: a node that sends its whole answer (401) after reading only the
    head, then drains the 8 MiB body a second later. llmux relayed the answer
    and freed the request while its body was still being written to the node
    (use-after-free under ASan). Each client must get the node's 401 and its
    body (in OpenAI's error shape: relayed as it is)."""
    def on_connect(conn):
        while not node.stopping.is_set():
            try:
                head = conn.read_until(b"\r\n\r\n")
            except EOFError:
                return
            if head.startswith(b"GET "):  # health checks
                conn.send(http_response(200, b"{}"))
                continue
            m = re.search(rb"(?i)\r\ncontent-length:\s*(\d+)", head)
            length = int(m.group(1)) if m else 0
            with node._lock:
                node.requests.append(head)
            conn.send(b"HTTP/1.1 401 Unauthorized\r\nContent-Type: application/json\r\n"
                      b"Content-Length: %d\r\n\r\n%s" % (len(DENIED), DENIED))
            if node.stopping.wait(1.0):
                return
            conn.read_exact(length)  # then drain the body and serve the next one
    node = procs.pynode(on_connect=on_connect)
    lx = procs.llmux([node], args=["--max-retries", "0"])
    big = json.dumps(chat_body(model="m", content="x" * (8 << 20))).encode()

    def post():
        with lx.new_client(timeout=T(30)) as c:
            r = c.post(CHAT, content=big, headers={"Content-Type": "application/json"})
        return r.status_code, r.content

    for _ in range(3):
        assert post() == (401, DENIED)
    with cf.ThreadPoolExecutor(3) as ex:
        results = [f.result(timeout=T(60)) for f in [ex.submit(post) for _ in range(3)]]
    assert results == [(401, DENIED)] * 3, results
    assert_serves(lx)


# ---- D1: 204 and 304 from a node ------------------------------------------------

@pytest.mark.parametrize("status", [204, 304])
def test_d1_no_body_statuses_are_relayed_without_a_body(procs, status):
    """D1: a 204 or 304 from a node was relayed with Transfer-Encoding:
    chunked and a `0` chunk, which desynchronises the keep-alive connection
    (httpx: RemoteProtocolError on the next request). The client must get the
    status with no body and no framing, and the connection must stay usable."""
    reason = {204: "No Content", 304: "Not Modified"}[status]

    def handler(conn, req):
        extra = b'ETag: "v1"\r\n' if status == 304 else b""
        conn.send(b"HTTP/1.1 %d %s\r\n%s\r\n" % (status, reason.encode(), extra))
        return True
    node = procs.pynode(handler)
    lx = procs.llmux([node])
    with lx.new_client(timeout=T(10)) as c:
        for i in range(2):  # the second on the same keep-alive connection
            try:
                r = c.post(CHAT, content=BODY)
            except httpx.RemoteProtocolError as e:
                raise AssertionError("request %d on the keep-alive connection: %r" % (i, e))
            assert r.status_code == status
            assert "transfer-encoding" not in r.headers, r.headers
            assert r.content == b""
        r = c.get("/health")
        assert r.status_code == 200
    # On the wire: the next response starts right after the head.
    conn = RawConn(lx.port, timeout=T(10))
    try:
        conn.send(raw_request("POST", CHAT, BODY))
        _, got, _, headers = conn.read_head()
        assert got == status
        assert not [k for k, _ in headers if k.lower() == "transfer-encoding"], headers
        conn.send(raw_request("GET", "/health"))
        r, _ = read_response_within(conn, T(10), "the next response")
        assert r.status == 200, r
    except ValueError as e:  # "0" parsed as a status line
        raise AssertionError("bytes after the %d head: %r (%s)" % (status, conn.buf[:100], e))
    finally:
        conn.close()
    assert_serves(lx)


# ---- D2: authentication and routing before the body ------------------------------

BIG_LENGTH = 30000000


def post_head(path, length, headers=()):
    head = "POST %s HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n" \
           "Content-Length: %d\r\n" % (path, length)
    for k, v in headers:
        head += "%s: %s\r\n" % (k, v)
    return (head + "\r\n").encode()


@pytest.mark.parametrize("expect", [False, True], ids=["plain", "expect-100"])
def test_d2_missing_token_is_401_before_the_body(procs, expect):
    """D2: without a token, the 401 must come as soon as the head is in,
    not after llmux has read (and buffered) a 30 MB body; with Expect:
    100-continue no `100 Continue` may be sent first."""
    node = procs.pynode()
    lx = procs.llmux([node], args=["--auth-token", "secret"])
    c = RawConn(lx.port, timeout=T(10))
    try:
        c.send(post_head(CHAT, BIG_LENGTH, [("Expect", "100-continue")] if expect else []))
        r, _ = read_response_within(c, T(3), "answer to a head without a token")
    finally:
        c.close()
    assert r.status == 401, r
    assert_openai_error(r.json())
    assert node.posts == []
    assert_serves(lx)


def test_d2_unknown_path_is_404_before_the_body(procs):
    """D2: POST to an unknown path is answered 404 from the head alone."""
    node = procs.pynode()
    lx = procs.llmux([node], args=["--auth-token", "secret"])
    c = RawConn(lx.port, timeout=T(10))
    try:
        c.send(post_head("/nope", BIG_LENGTH, [("Authorization", "Bearer secret")]))
        r, _ = read_response_within(c, T(3), "answer to a POST /nope head")
    finally:
        c.close()
    assert r.status == 404, r
    assert_serves(lx)


def test_d2_right_token_with_expect_gets_100_continue(procs):
    """D2 (unchanged behaviour): with the right token and Expect:
    100-continue, `100 Continue` comes first and the request goes through."""
    node = procs.pynode()
    lx = procs.llmux([node], args=["--auth-token", "secret"])
    c = RawConn(lx.port, timeout=T(10))
    try:
        c.send(post_head(CHAT, len(BODY), [("Authorization", "Bearer secret"),
                                           ("Expect", "100-continue")]))
        interim, _ = read_response_within(c, T(3), "100 Continue")
        assert interim.status == 100, interim
        c.send(BODY)
        r, _ = read_response_within(c, T(10))
    finally:
        c.close()
    assert r.status == 200, r
    assert_serves(lx)


def test_d2_unauthenticated_bodies_are_not_buffered(procs):
    """D2: 20 connections each sending 5 MB of body without a token: each
    gets a 401 (or is closed after it), none a 200, and llmux's RSS stays
    under 64 MiB (it buffered every body before checking the token). The
    clients all hold back their last body byte until every one has sent
    the rest, so that all 20 bodies are in flight at once."""
    node = procs.pynode()
    lx = procs.llmux([node], args=["--auth-token", "secret"])
    limit = rss_limit_mib(lx.pid)
    n_clients, size = 20, 5 << 20
    piece = b"x" * 65536
    results = [None] * n_clients
    all_sent = threading.Barrier(n_clients + 1, timeout=T(30))

    def client(i):
        c = None
        try:
            c = RawConn(lx.port, timeout=T(5))
            try:
                c.send(post_head(CHAT, size))
                for _ in range(size // len(piece) - 1):
                    c.sock.sendall(piece)
                c.sock.sendall(piece[:-1])
            except (ConnectionResetError, BrokenPipeError, socket.timeout):
                pass  # llmux stopped reading or closed after its 401: fine
            try:
                all_sent.wait()
            except threading.BrokenBarrierError:
                pass
            try:
                c.sock.sendall(b"x")
            except OSError:
                pass
            try:
                results[i] = c.read_response().status
            except (EOFError, ConnectionResetError):
                results[i] = "closed"
            except socket.timeout:
                results[i] = "no answer"
        except OSError as e:
            results[i] = "error: %r" % e
        finally:
            if c:
                c.close()

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(n_clients)]
    for t in threads:
        t.start()
    peak = rss_mib(lx.pid)
    try:
        all_sent.wait()
    except threading.BrokenBarrierError:
        pass
    peak = max(peak, rss_mib(lx.pid))
    deadline = time.monotonic() + T(30)
    for t in threads:
        t.join(max(0.1, deadline - time.monotonic()))
    assert not any(t.is_alive() for t in threads), "clients still running after %.0f s" % T(30)
    assert 200 not in results, results
    assert all(r in (401, "closed") for r in results), results
    assert peak < limit, "llmux RSS reached %.0f MiB with %d unauthenticated %d-byte bodies " \
        "in flight" % (peak, n_clients, size)
    assert node.posts == []
    assert_serves(lx)


# ---- D3: node stalls ---------------------------------------------------------------

def test_d3_node_that_stalls_inside_its_head_times_out(procs):
    """D3: a node that sends part of its response head and stalls held the
    request forever (the first byte had arrived, so --node-timeout no longer
    applied). The client must get 504 within a few seconds, and the request
    must leave llmux_active_requests."""
    def handler(conn, req):
        conn.send(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n")
        node.stopping.wait(T(30))
        return False
    node = procs.pynode(handler)
    lx = procs.llmux([node], args=["--node-timeout", "1", "--max-retries", "0"])
    t0 = time.monotonic()
    try:
        with lx.new_client(timeout=T(4)) as c:
            r = c.post(CHAT, content=stream_body())
    except httpx.TimeoutException:
        raise AssertionError("no answer within %.0f s from a node stalled in its head" % T(4))
    assert r.status_code == 504, (r.status_code, r.text)
    assert time.monotonic() - t0 < T(4)
    wait_active_requests(lx, 0, T(3))
    assert_serves(lx)


def test_d3_stalled_stream_ends_with_an_error_event(procs):
    """D3: a stream whose node stalls after one event ends, after
    --stream-idle-timeout, with an SSE error event and a clean end of the
    chunked body; the request then leaves llmux_active_requests."""
    def handler(conn, req):
        conn.send(sse_head())
        conn.send(chunk(b'data: {"id":"x","choices":[{"index":0,"delta":{"content":"a"}}]}\n\n'))
        node.stopping.wait(T(30))
        return False
    node = procs.pynode(handler)
    lx = procs.llmux([node], args=["--stream-idle-timeout", "1", "--max-retries", "0"])
    t0 = time.monotonic()
    body = b""
    try:
        with lx.new_client(timeout=T(4)) as c:
            with c.stream("POST", CHAT, content=stream_body()) as r:
                assert r.status_code == 200
                for piece in r.iter_raw():  # must end cleanly: no exception
                    body += piece
                    assert time.monotonic() - t0 < T(4), "stream still open: %r" % body
    except httpx.TimeoutException:
        raise AssertionError("stalled stream not ended within %.0f s: %r" % (T(4), body))
    events = [e for e in body.split(b"\n\n") if e.strip()]
    assert events[0].startswith(b'data: {"id":"x"'), events
    assert events[-1].startswith(b"data: ") and "error" in json.loads(events[-1][6:]), events
    wait_active_requests(lx, 0, T(3))
    assert_serves(lx)


def test_d3_stream_idle_timeout_is_on_by_default(tmp_path):
    """D3: STREAM_IDLE_TIMEOUT_SECONDS defaults to 120 (it was 0 = off, so a
    stalled stream held its slot forever)."""
    r = subprocess.run([bin_path("llmux"), "--check-config", "--nodes", "http://127.0.0.1:9"],
                       env=clean_env(), cwd=str(tmp_path), stdin=subprocess.DEVNULL,
                       capture_output=True, timeout=T(20))
    assert r.returncode == 0, r.stderr
    conf = json.loads(r.stdout)
    assert conf["stream_idle_timeout_seconds"] == 120, conf["stream_idle_timeout_seconds"]


# ---- D4: clients that stop reading ---------------------------------------------------

BIG_EVENT = (b'data: {"id":"big","object":"chat.completion.chunk","choices":[{"index":0,'
             b'"delta":{"content":"' + b"w" * 200 + b'"},"finish_reason":null}]}\n\n')


def big_stream_handler(node, total):
    """Answers requests whose body holds "big" with <total> bytes of SSE,
    others as the echo node does."""
    def handler(conn, req):
        if b"big" not in req.body:
            return echo_handler(conn, req)
        conn.send(sse_head())
        framed = chunk(BIG_EVENT * 256)
        for _ in range(total // (len(BIG_EVENT) * 256)):
            if node.stopping.is_set():
                return False
            conn.send(framed)
        conn.send(chunk(b"data: [DONE]\n\n") + b"0\r\n\r\n")
        return True
    return handler


def test_d4_clients_that_stop_reading_free_their_slots(procs):
    """D4: with --max-concurrent 4, four clients that request a multi-MB
    stream and never read held every slot forever. With --send-timeout 1
    their connections are dropped and a fifth request gets 200 in time."""
    node = procs.pynode()
    node.handler = big_stream_handler(node, 32 << 20)
    lx = procs.llmux([node], args=["--max-concurrent", "4", "--send-timeout", "1",
                                   "--queue-timeout", "20"])
    stuck = []
    try:
        for i in range(4):
            c = RawConn(lx.port, timeout=T(10), rcvbuf=4096)
            stuck.append(c)
            c.send(raw_request("POST", CHAT, stream_body(content="big %d" % i)))
        wait_active_requests(lx, 4, T(5))
        t0 = time.monotonic()
        try:
            with lx.new_client(timeout=T(5)) as c:
                r = c.post(CHAT, content=BODY)
        except httpx.TimeoutException:
            raise AssertionError("the 5th request got no slot within %.0f s" % T(5))
        assert r.status_code == 200, (r.status_code, r.text)
        assert time.monotonic() - t0 < T(5)
    finally:
        for c in stuck:
            c.close()
    assert_serves(lx)


def test_d4_unread_connection_close_response_is_dropped(procs):
    """D4: a client that asked for `Connection: close` and never reads its
    (large) response kept its connection and request forever. After
    --send-timeout llmux must let go of both; reading then ends in EOF or a
    reset before the whole response."""
    node = procs.pynode()
    total = 16 << 20
    node.handler = big_stream_handler(node, total)
    lx = procs.llmux([node], env={"SEND_TIMEOUT_SECONDS": "1"})
    c = RawConn(lx.port, timeout=T(10), rcvbuf=4096)
    try:
        client_port = c.sock.getsockname()[1]
        c.send(raw_request("POST", CHAT, stream_body(content="big"),
                           headers=[("Connection", "close")]))
        wait_active_requests(lx, 1, T(5))
        wait_for(lambda: not holds_connection(lx.pid, lx.port, client_port), T(5),
                 interval=0.1, what="llmux to drop the unread connection")
        wait_active_requests(lx, 0, T(3))
        got = 0
        c.sock.settimeout(T(5))
        try:
            while got <= total:
                data = c.sock.recv(65536)
                if not data:
                    break
                got += len(data)
        except ConnectionResetError:
            pass
        except socket.timeout:
            raise AssertionError("connection still open after %d bytes" % got)
        assert got < total, "the whole %d-byte response arrived: not dropped" % got
    finally:
        c.close()
    assert_serves(lx)


# ---- request body trickle ------------------------------------------------------------

def test_body_trickle_is_bounded_by_request_timeout(procs):
    """REQUEST_TIMEOUT_SECONDS bounds the whole head and body read: a client
    sending one body byte every 0.3 s gets 408 within a few seconds (the
    timer only measured gaps, so it never fired)."""
    node = procs.pynode()
    lx = procs.llmux([node], args=["--request-timeout", "2"])
    bound = T(4)
    c = RawConn(lx.port, timeout=T(10))
    try:
        t0 = time.monotonic()
        c.send(raw_request("POST", CHAT, headers=[("Content-Length", "1000")]))
        while time.monotonic() - t0 < bound:
            readable, _, _ = select.select([c.sock], [], [], 0.3)
            if readable:
                break  # the answer (or the close) is here
            try:
                c.sock.sendall(b" ")
            except OSError:
                break
        left = max(0.5, bound + 0.5 - (time.monotonic() - t0))
        r, _ = read_response_within(c, left, "answer to a body sent 1 byte per 0.3 s "
                                    "%.1f s after the head" % bound)
        assert r.status == 408, r
        assert time.monotonic() - t0 < bound + 0.5
    finally:
        c.close()
    assert node.posts == []
    assert_serves(lx)


# ---- pipelined input past the input buffer's cap ----------------------------------------

def test_pipelined_input_past_the_buffer_cap_is_not_lost(procs):
    """A slow first request followed at once by ~600 KB of small pipelined
    requests (GET /health, and every 4th a proxied POST, so the connection
    goes busy again while its input buffer is full): bytes past 384 KiB of
    buffered input were silently dropped, desynchronising the connection.
    Every request must be answered, once, in order."""
    def handler(conn, req):
        if b"slow" in req.body and node.stopping.wait(1.0):
            return False
        return echo_handler(conn, req)
    node = procs.pynode(handler)
    lx = procs.llmux([node])
    slow = json.dumps(chat_body(model="m", content="slow")).encode()
    reqs = [raw_request("POST", CHAT, slow, headers=[("X-Request-Id", "slow")])]
    n = 0
    size = len(reqs[0])
    while size < 600 * 1024:
        if n % 4 == 0:
            reqs.append(raw_request("POST", CHAT, BODY, headers=[("X-Request-Id", "p%d" % n)]))
        else:
            reqs.append(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Request-Id: p%d\r\n\r\n" % n)
        size += len(reqs[-1])
        n += 1
    want = ["slow"] + ["p%d" % i for i in range(n)]
    got = []
    errors = []
    c = RawConn(lx.port, timeout=T(10))

    def reader():
        try:
            for _ in want:
                r = c.read_response()
                got.append((r.status, r.header("x-request-id")))
        except Exception as e:  # reported below
            errors.append(repr(e))
    t = threading.Thread(target=reader, daemon=True)
    t.start()
    try:
        c.send(b"".join(reqs))
        t.join(T(30))
    finally:
        c.close()
        t.join(T(5))
    assert len(got) == len(want), "%d of %d responses (%s); last: %r" % (
        len(got), len(want), errors, got[-3:])
    assert [rid for _, rid in got] == want
    assert all(st == 200 for st, _ in got), [g for g in got if g[0] != 200][:5]
    assert_serves(lx)


# ---- D5: bad chunked framing from a node ------------------------------------------------

def test_d5_bad_chunk_size_from_node_is_502(procs):
    """D5: a non-streamed chunked answer with a bad chunk-size line (`zz`)
    gave the client an empty reply; it must be a 502 in OpenAI's shape."""
    def handler(conn, req):
        conn.send(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                  b"Transfer-Encoding: chunked\r\n\r\nzz\r\n{\"a\":1}\r\n0\r\n\r\n")
        return False
    node = procs.pynode(handler)
    lx = procs.llmux([node], args=["--max-retries", "0"])
    with lx.new_client(timeout=T(10)) as c:
        try:
            r = c.post(CHAT, content=BODY)
        except httpx.HTTPError as e:
            raise AssertionError("no proper answer: %r" % e)
    assert r.status_code == 502, (r.status_code, r.content)
    assert_openai_error(r.json())
    assert_serves(lx)


# ---- SSE with a Content-Length ------------------------------------------------------------

def test_sse_with_content_length_is_rechunked_when_filtered(procs):
    """A node's text/event-stream with a Content-Length: llmux filters the
    usage event it injected for itself, so the length no longer holds. The
    client must get a chunked stream (no Content-Length) of whole events
    ending with `data: [DONE]`, and no usage event it did not ask for."""
    def event(obj):
        return b"data: " + json.dumps(obj).encode() + b"\n\n"

    def handler(conn, req):
        base = {"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "m"}
        body = event(dict(base, choices=[{"index": 0, "delta": {"role": "assistant",
                                                                  "content": ""}}]))
        for w in ("one", " two", " three"):
            body += event(dict(base, choices=[{"index": 0, "delta": {"content": w}}]))
        body += event(dict(base, choices=[{"index": 0, "delta": {}, "finish_reason": "stop"}]))
        body += event(dict(base, choices=[], usage={"prompt_tokens": 3, "completion_tokens": 3,
                                                    "total_tokens": 6}))
        body += b"data: [DONE]\n\n"
        conn.send(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                  b"Content-Length: %d\r\n\r\n" % len(body) + body)
        return True
    node = procs.pynode(handler)
    lx = procs.llmux([node])
    c = RawConn(lx.port, timeout=T(10))
    try:
        c.send(raw_request("POST", CHAT, stream_body()))
        r, _ = read_response_within(c, T(5), "the whole stream")
    finally:
        c.close()
    assert r.status == 200, r
    assert r.header("content-length") is None, r.headers
    assert "chunked" in (r.header("transfer-encoding") or ""), r.headers
    events = r.body.split(b"\n\n")
    assert events[-1] == b"", "stream does not end with a whole event: %r" % r.body[-100:]
    events = events[:-1]
    assert events[-1] == b"data: [DONE]", events
    for ev in events[:-1]:
        assert ev.startswith(b"data: "), ev
        obj = json.loads(ev[6:])
        assert "usage" not in obj, "usage event the client did not ask for: %r" % ev
    text = "".join(json.loads(ev[6:])["choices"][0]["delta"].get("content", "")
                   for ev in events[:-1])
    assert text == "one two three"
    assert_serves(lx)


# ---- strict request parsing ----------------------------------------------------------------

def chunked_head():
    return ("POST %s HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            "Transfer-Encoding: chunked\r\n\r\n" % CHAT).encode()


@pytest.mark.parametrize("data, status", [
    (b"GET /hea\tlth HTTP/1.1\r\nHost: x\r\n\r\n", 400),
    (b"GET /hea\x0clth HTTP/1.1\r\nHost: x\r\n\r\n", 400),
    (b"GET /health HTTP/9.9\r\nHost: x\r\n\r\n", 505),
    (b"GET /health HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
    (b"CONNECT x:443 HTTP/1.1\r\nHost: x:443\r\n\r\n", 405),
    (chunked_head() + b"7fffffffffffffff\r\n", 413),
    (chunked_head() + b"10000000\r\n", 413),
], ids=["tab-in-target", "formfeed-in-target", "http-9.9", "two-hosts", "connect",
        "chunk-size-2^63", "chunk-size-256MiB"])
def test_strict_request_parsing(procs, data, status):
    """Strict parsing: control characters in the target, an unknown HTTP
    version, a repeated Host, CONNECT, and a chunk larger than MAX_BODY_BYTES
    (answered at once, without waiting for its data) are refused with the
    right status, and the connection is then closed."""
    node = procs.pynode()
    lx = procs.llmux([node])
    c = RawConn(lx.port, timeout=T(10))
    try:
        c.send(data)
        r, _ = read_response_within(c, T(3))
        assert r.status == status, r
        assert c.is_closed_by_peer(T(5)), "connection kept open after %d" % r.status
    finally:
        c.close()
    assert node.posts == []
    assert_serves(lx)


def test_absolute_form_query_does_not_route(procs):
    """Strict parsing: in `http://host?x=/v1/models` the path is empty and
    `/v1/models` is in the query; it must not be routed to /v1/models."""
    node = procs.pynode()
    lx = procs.llmux([node])
    c = RawConn(lx.port, timeout=T(10))
    try:
        c.send(b"GET http://host?x=/v1/models HTTP/1.1\r\nHost: host\r\n\r\n")
        r, _ = read_response_within(c, T(3))
    finally:
        c.close()
    assert r.status in (400, 404), r
    assert_serves(lx)


# ---- node timeouts and passive health -------------------------------------------------------

def test_node_timeouts_do_not_eject_a_node_that_keeps_answering(procs):
    """Timeouts of slow requests must not eject a node that keeps answering
    other requests: with --node-timeout 1 and a failure threshold of 2, four
    concurrent slow requests (504 each) while fast ones succeed leave both
    nodes healthy."""
    def slow_aware(node):
        def handler(conn, req):
            if b"slow" in req.body and node.stopping.wait(3.0):
                return False
            return echo_handler(conn, req)
        return handler
    a = procs.pynode()
    b = procs.pynode()
    a.handler, b.handler = slow_aware(a), slow_aware(b)
    lx = procs.llmux([a, b], workers=1,
                     args=["--node-timeout", "1", "--health-failure-threshold", "2",
                           "--max-retries", "0", "--health-check-interval", "30"])
    slow = json.dumps(chat_body(model="m", content="slow")).encode()

    def post_slow():
        with lx.new_client(timeout=T(10)) as c:
            return c.post(CHAT, content=slow).status_code
    def slow_posts():
        return sum(1 for n in (a, b) for r in n.posts if b"slow" in r.body)
    fast_status = []
    with cf.ThreadPoolExecutor(4) as ex:
        futs = [ex.submit(post_slow) for _ in range(4)]
        # All four at the nodes first (two each, round robin), then the
        # fast ones while they wait.
        wait_for(lambda: slow_posts() == 4, T(5), what="the slow requests to reach the nodes")
        with lx.new_client(timeout=T(10)) as c:
            deadline = time.monotonic() + T(10)
            while not all(f.done() for f in futs) and time.monotonic() < deadline:
                fast_status.append(c.post(CHAT, content=BODY).status_code)
                time.sleep(0.05)
        slow_status = [f.result(timeout=T(10)) for f in futs]
    assert slow_status == [504] * 4, slow_status
    assert fast_status and set(fast_status) == {200}, \
        "fast requests meanwhile: %s" % collections.Counter(fast_status)
    states = {name: n["state"] for name, n in lx.node_stats().items()}
    assert states == {a.url: "healthy", b.url: "healthy"}, states
    assert_serves(lx)


# ---- descriptors and connection limits --------------------------------------------------------

def peer_closed(s):
    """True once the peer has closed socket <s> (EOF or reset); never blocks.
    Bytes the peer sent first (an error answer) are read and dropped."""
    try:
        while select.select([s], [], [], 0)[0]:
            if not s.recv(65536):
                return True
        return False
    except ConnectionResetError:
        return True


def low_nofile():
    resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))


def test_emfile_is_survived_and_does_not_mark_nodes_unhealthy(procs):
    """EMFILE: with 64 descriptors and 100 idle clients llmux must stay up
    and log a rate-limited warning about descriptors (not thousands of
    lines). Requests that arrive meanwhile on connections opened before
    cannot get a connection to the node: that is llmux's own shortage, not
    the node's failure, so the node must not be ejected or marked unhealthy
    (it was: "ejected ... (connect error)", then 503 for everyone). Once the
    clients are gone, a proxied request succeeds."""
    sim = procs.sim(fast=True)
    lx = procs.llmux([sim], workers=1, preexec_fn=low_nofile,
                     args=["--health-check-interval", "0.2", "--health-failure-threshold", "2",
                           "--health-recovery-threshold", "100", "--connect-timeout", "1"])
    early = []  # connected while descriptors are still free
    idle = []
    try:
        for _ in range(6):
            early.append(RawConn(lx.port, timeout=T(10)))
        assert_serves(lx)  # llmux has accepted them by now
        for _ in range(100):
            idle.append(socket.create_connection(("127.0.0.1", lx.port), timeout=T(5)))
        time.sleep(0.5)  # llmux accepts what it can, descriptors run out
        for c in early:
            c.send(raw_request("POST", CHAT, json.dumps(chat_body()).encode()))
        for c in early:  # any answer will do; the node's health is checked below
            try:
                read_response_within(c, T(10), "an answer while out of descriptors")
            except (EOFError, ConnectionResetError):
                pass
        assert lx.alive(), lx.describe()
    finally:
        for s in idle:
            s.close()
        for c in early:
            c.close()
    time.sleep(0.5)  # let llmux see the closes
    assert lx.alive(), lx.describe()
    with lx.new_client(timeout=T(10)) as c:
        r = c.post(CHAT, json=chat_body())
        assert r.status_code == 200, (r.status_code, r.text)
        nodes = {n["name"]: n for n in c.get("/health").json()["nodes"]}
    assert nodes[sim.url]["state"] == "healthy", nodes[sim.url]
    lines = [ln for ln in lx.output_bytes().decode("utf-8", "replace").splitlines()
             if "descriptor" in ln.lower()]
    assert 1 <= len(lines) < 50, "%d log lines about descriptors:\n%s" % (
        len(lines), "\n".join(lines[:5]) or lx.stderr)
    assert_serves(lx)


def test_max_connections_pauses_accepting(procs):
    """MAX_CONNECTIONS: with --max-connections 10, of 20 connections 10 are
    served and the other 10 wait in the backlog unanswered (accepting
    pauses, as nginx does at worker_connections; no spin, no descriptor
    each); the limit is logged; once the first 10 close, the waiting ones
    are accepted and served."""
    node = procs.pynode()
    lx = procs.llmux([node], workers=1, args=["--max-connections", "10"])
    conns = []
    try:
        for _ in range(20):
            conns.append(socket.create_connection(("127.0.0.1", lx.port), timeout=T(5)))
        for s in conns:
            s.sendall(raw_request("GET", "/health"))
        served = []
        for s in conns[:10]:
            reply = s.recv(12)
            assert reply.startswith(b"HTTP/1.1 200"), reply
            served.append(s)
        # The other ten are not answered while the first ten stay open.
        for s in conns[10:]:
            s.settimeout(0.05)
        time.sleep(T(0.5))
        waiting = 0
        for s in conns[10:]:
            try:
                s.recv(12)
            except socket.timeout:
                waiting += 1
        assert waiting == 10, "%d of 10 over the limit were answered" % (10 - waiting)
        out = lx.output_bytes().decode("utf-8", "replace")
        assert re.search(r"connection limit reached \(MAX_CONNECTIONS=10\)", out), out
        for s in conns[:10]:
            s.close()
        for s in conns[10:]:
            s.settimeout(T(5))
            reply = s.recv(12)
            assert reply.startswith(b"HTTP/1.1 200"), reply
    finally:
        for s in conns:
            s.close()
    with lx.new_client(timeout=T(10)) as c:
        assert c.post(CHAT, content=BODY).status_code == 200
    assert_serves(lx)


# ---- low: forwarded headers and config ----------------------------------------------------------

def test_forwarded_headers_are_normalised(procs):
    """Low: the node gets exactly one X-Forwarded-For, the client's value
    followed by the client address, and no X-Real-IP or Forwarded header
    taken from the client."""
    node = procs.pynode()
    lx = procs.llmux([node])
    r = lx.client.post(CHAT, content=BODY, headers={
        "X-Forwarded-For": "1.2.3.4", "X-Real-IP": "5.6.7.8", "Forwarded": "for=9.9.9.9"})
    assert r.status_code == 200, r.text
    fwd = node.posts[-1]
    assert fwd.header_all("x-forwarded-for") == ["1.2.3.4, 127.0.0.1"], fwd.headers
    assert fwd.header_all("x-real-ip") == [], fwd.headers
    assert fwd.header_all("forwarded") == [], fwd.headers
    assert_serves(lx)


def test_headers_named_in_connection_are_not_forwarded(procs):
    """Low: a header the client lists in Connection is hop-by-hop (RFC 9110
    7.6.1) and must not reach the node."""
    node = procs.pynode()
    lx = procs.llmux([node])
    c = RawConn(lx.port, timeout=T(10))
    try:
        c.send(raw_request("POST", CHAT, BODY, headers=[("Connection", "close, X-Secret-Hop"),
                                                        ("X-Secret-Hop", "1")]))
        r, _ = read_response_within(c, T(10))
    finally:
        c.close()
    assert r.status == 200, r
    assert node.posts[-1].header_all("x-secret-hop") == [], node.posts[-1].headers
    assert_serves(lx)


def test_admin_token_equal_to_auth_token_is_refused(procs):
    """Low: an ADMIN_TOKEN equal to AUTH_TOKEN would give every client the
    admin API; llmux must refuse to start and name ADMIN_TOKEN."""
    node = procs.pynode()
    lx = procs.llmux([node], ready=False, args=["--auth-token", "same-secret",
                                                "--admin-token", "same-secret"])
    deadline = time.monotonic() + T(10)
    while lx.alive() and time.monotonic() < deadline:
        if re.search(rb"listening on http://", lx.output_bytes()):
            break
        time.sleep(0.05)
    rc = lx.wait(0.1)
    assert rc is not None, "llmux started with ADMIN_TOKEN == AUTH_TOKEN\n%s" % lx.describe()
    lx.expect_rc = rc
    assert rc != 0
    assert "ADMIN_TOKEN" in lx.output_bytes().decode("utf-8", "replace"), lx.describe()
