"""
Streaming (SSE) through llmux: events relayed as they arrive, client
disconnects cancel the node's work, broken streams end with an SSE error
event, graceful SIGTERM lets a stream finish.
"""
import json
import re
import signal
import socket
import time

import httpx
import pytest

from conftest import T
from e2e_nodes import http_response
from e2e_util import (chat_body, completion_body, iter_sse, node_error_as_openai, read_sse,
                       wait_for)

CHAT = "/v1/chat/completions"
COMPL = "/v1/completions"
ID_RE = re.compile(rb'"id":"(chatcmpl|cmpl)-[0-9a-f]+"')


def no_id(data):
    """The sim's "id" is a hash of the request body, and llmux may add
    stream_options to a stream's body (test_proxy checks the body itself):
    compare streams without it."""
    return ID_RE.sub(b'"id":"X"', data)


def stream_body(n_tokens=None, **kw):
    return json.dumps(chat_body(content="stream please", stream=True,
                                max_tokens=n_tokens, **kw)).encode()


def check_chat_stream(events, n_tokens):
    """Asserts a complete, well-formed chat stream of <n_tokens> tokens."""
    assert events and events[-1].done, "stream did not end with [DONE]: %r" % events[-3:]
    chunks = [e.json() for e in events[:-1]]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks), chunks[:2]
    assert len({c["id"] for c in chunks}) == 1
    text_events = [c for c in chunks if c["choices"] and c["choices"][0]["delta"].get("content")]
    assert len(text_events) == n_tokens, (len(text_events), n_tokens)
    assert chunks[0]["choices"][0]["delta"].get("role") == "assistant"
    assert not any("error" in c for c in chunks)


@pytest.mark.parametrize("path", [CHAT, COMPL], ids=["chat", "completions"])
def test_stream_is_relayed_whole(procs, path):
    sim = procs.sim(fast=True)
    lx = procs.llmux([sim])
    if path == CHAT:
        body = stream_body(n_tokens=20)
    else:
        body = json.dumps(completion_body(stream=True, max_tokens=20)).encode()
    with lx.client.stream("POST", path, content=body) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        assert r.headers["x-routed-node"] == sim.url
        assert r.headers["x-request-id"]
        assert r.headers.get("transfer-encoding") == "chunked"
        assert "content-length" not in r.headers
        events = read_sse(r)
    if path == CHAT:
        check_chat_stream(events, 20)
    else:
        assert events[-1].done
        texts = [e.json()["choices"][0]["text"] for e in events[:-1] if e.json()["choices"]]
        assert len([t for t in texts if t]) == 20


def test_stream_events_arrive_incrementally(procs):
    """With a slow decode step, the first event reaches the client long
    before the last one is produced: llmux does not buffer the stream."""
    sim = procs.sim(decode_ms=40)
    lx = procs.llmux([sim])
    n = 40
    t0 = time.monotonic()
    with lx.client.stream("POST", CHAT, content=stream_body(),
                          headers={"x-sim": "tokens=%d" % n}) as r:
        assert r.status_code == 200
        events = read_sse(r)
    total = time.monotonic() - t0
    check_chat_stream(events, n)
    first = events[0].t - t0
    last = events[-1].t - t0
    # ~40 steps of 40 ms: the last event comes >= 1.6 s after the start.
    assert total >= 1.0, "stream too fast to judge (%.2f s)" % total
    assert first < 0.25 * last, "first event at %.2f s, last at %.2f s" % (first, last)
    # The events were spread over the stream, not delivered in a burst.
    arrivals = sorted({round(e.t, 3) for e in events})
    assert len(arrivals) >= n // 3, "events arrived in only %d reads" % len(arrivals)
    mid = events[len(events) // 2].t - t0
    assert 0.2 * last < mid < 0.8 * last, (first, mid, last)


def test_client_disconnect_mid_stream_cancels_the_node_request(procs):
    sim = procs.sim(decode_ms=50)
    lx = procs.llmux([sim])
    client = lx.new_client()
    got = 0
    with client.stream("POST", CHAT, content=stream_body(),
                       headers={"x-sim": "tokens=400"}) as r:
        assert r.status_code == 200
        for ev in iter_sse(r):
            got += 1
            if got == 3:
                st0 = sim.stats()
                assert st0["running"] == 1, st0
                # Leaving the loop early closes the generator, and httpx then
                # closes the socket: the stream is abandoned mid-way.
                break
    client.close()
    st = wait_for(lambda: (lambda s: s if s["running"] == 0 else None)(sim.stats()), T(10),
                  what="the sim's running count to drop to 0")
    assert st["aborted_total"] >= 1, st
    assert st["completed_total"] == 0, st
    wait_for(lambda: lx.node_stats()[sim.url]["in_flight"] == 0, T(10),
             what="llmux's in_flight for the node to drop to 0")
    # The gateway and the node still serve.
    r = lx.client.post(CHAT, json=chat_body(max_tokens=2), headers={"x-sim": "tokens=2"})
    assert r.status_code == 200, r.text


def test_client_disconnect_while_waiting_for_first_token_cancels(procs):
    sim = procs.sim()
    lx = procs.llmux([sim])
    c = socket.create_connection(("127.0.0.1", lx.port), timeout=T(10))
    body = stream_body(n_tokens=5)
    c.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nx-sim: ttft_ms=30000\r\n"
              b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
    wait_for(lambda: sim.stats()["running"] + sim.stats()["waiting"] >= 1, T(10),
             what="the request to reach the sim")
    c.close()
    st = wait_for(lambda: (lambda s: s if s["running"] == 0 and s["waiting"] == 0 else None)(
        sim.stats()), T(10), what="the sim to drop the request")
    assert st["aborted_total"] >= 1, st


def test_broken_node_stream_ends_with_an_error_event(procs):
    sim = procs.sim(decode_ms=5)
    lx = procs.llmux([sim])
    body = stream_body()
    fault = {"x-sim": "tokens=20,drop_after=3"}
    # What the node itself sends before it drops the connection.
    with sim.client.stream("POST", CHAT, content=body, headers=fault) as d:
        direct = b""
        with pytest.raises(httpx.RemoteProtocolError):
            for chunk in d.iter_raw():
                direct += chunk
    direct_events = [e for e in direct.split(b"\n\n") if e.strip()]
    assert len(direct_events) >= 3
    with lx.client.stream("POST", CHAT, content=body, headers=fault) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        events = read_sse(r)  # must end cleanly: no exception
    assert events, "no events at all"
    last = events[-1]
    err = last.json()["error"]
    assert isinstance(err["message"], str) and err["message"]
    assert err.get("type")
    assert not any(e.done for e in events), "a broken stream must not claim [DONE]"
    # Everything before the error event is what the node sent.
    assert [no_id(e.raw) for e in events[:-1]] == [no_id(e) for e in direct_events]
    st = sim.stats()
    assert st["dropped_total"] == 2, st
    wait_for(lambda: lx.node_stats()[sim.url]["in_flight"] == 0, T(10),
             what="llmux's in_flight for the node to drop to 0")


def sse_head():
    return (b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n")


def chunk(data):
    return b"%x\r\n%s\r\n" % (len(data), data)


def test_stream_broken_by_a_raw_node_ends_with_an_error_event(procs):
    def handler(conn, req):
        conn.send(sse_head())
        conn.send(chunk(b'data: {"n":1}\n\n'))
        conn.send(chunk(b'data: {"n":2}\n\n'))
        time.sleep(0.05)
        return False  # close mid-stream, without the last chunk
    node = procs.pynode(handler)
    lx = procs.llmux([node])
    with lx.client.stream("POST", CHAT, content=stream_body()) as r:
        assert r.status_code == 200
        events = read_sse(r)
    assert [e.data for e in events[:2]] == [b'{"n":1}', b'{"n":2}']
    assert len(events) == 3, events
    assert "error" in events[2].json(), events[2]
    # Not retried: the stream had started.
    assert len(node.posts) == 1


@pytest.mark.parametrize("usage", [False, True], ids=["plain", "client-asked-usage"])
def test_stream_broken_mid_event_ends_with_an_error_event(procs, usage):
    def handler(conn, req):
        conn.send(sse_head())
        conn.send(chunk(b'data: {"n":1}\n\n'))
        conn.send(chunk(b'data: {"partial'))
        time.sleep(0.05)
        return False
    node = procs.pynode(handler)
    lx = procs.llmux([node])
    extra = {"stream_options": {"include_usage": True}} if usage else {}
    with lx.client.stream("POST", CHAT, content=stream_body(**extra)) as r:
        assert r.status_code == 200
        body = b"".join(r.iter_raw())
    assert body.startswith(b'data: {"n":1}\n\n')
    # The error event must be parseable as its own event, whatever came before.
    tail = body.split(b"\n\n")
    assert any(ev.startswith(b"data: ") and b'"error"' in ev and _json_ok(ev[6:])
               for ev in tail), body


def _json_ok(b):
    try:
        json.loads(b)
        return True
    except ValueError:
        return False


def test_non_stream_body_cut_short_is_not_passed_as_complete(procs):
    def handler(conn, req):
        conn.send(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                  b"Content-Length: 1000\r\n\r\n{\"partial\": tr")
        time.sleep(0.05)
        return False
    node = procs.pynode(handler)
    lx = procs.llmux([node])
    with lx.new_client(timeout=T(10)) as c:
        with pytest.raises(httpx.RemoteProtocolError):
            c.post(CHAT, content=stream_body())


def test_idle_stream_timeout(procs):
    """STREAM_IDLE_TIMEOUT_SECONDS ends a stream whose node stops sending."""
    def handler(conn, req):
        conn.send(sse_head())
        conn.send(chunk(b'data: {"n":1}\n\n'))
        node.stopping.wait(T(8))
        return False
    node = procs.pynode(handler)
    lx = procs.llmux([node], env={"STREAM_IDLE_TIMEOUT_SECONDS": "1"})
    t0 = time.monotonic()
    with lx.client.stream("POST", CHAT, content=stream_body()) as r:
        events = read_sse(r)
    elapsed = time.monotonic() - t0
    assert elapsed < T(6), "idle stream not ended after %.1f s" % elapsed
    assert events[0].data == b'{"n":1}'
    assert "error" in events[-1].json(), events


def test_many_concurrent_streams_are_not_mixed(procs):
    import concurrent.futures as cf
    sims = [procs.sim(decode_ms=5), procs.sim(decode_ms=5)]
    lx = procs.llmux(sims)

    def one(i):
        body = json.dumps(chat_body(content="stream %d" % i, stream=True, max_tokens=15)).encode()
        with lx.new_client() as c:
            with c.stream("POST", CHAT, content=body) as r:
                assert r.status_code == 200
                node = r.headers["x-routed-node"]
                got = b"".join(r.iter_raw())
        return body, node, got

    with cf.ThreadPoolExecutor(30) as ex:
        results = list(ex.map(one, range(30)))
    by_url = {s.url: s for s in sims}
    for body, node, got in results:
        expect = by_url[node].client.post(CHAT, content=body).content
        assert no_id(got) == no_id(expect)
        assert got.endswith(b"data: [DONE]\n\n")


def test_sigterm_lets_an_inflight_stream_finish(procs):
    sim = procs.sim(decode_ms=30)
    lx = procs.llmux([sim])
    n = 40
    with lx.client.stream("POST", CHAT, content=stream_body(),
                          headers={"x-sim": "tokens=%d" % n}) as r:
        assert r.status_code == 200
        it = iter_sse(r)
        events = [next(it), next(it)]
        lx.signal(signal.SIGTERM)
        # New connections are refused soon after the signal...
        wait_for(lambda: _refused(lx.port), T(10), what="the listener to close")
        # ...while the stream in flight runs to its end.
        events += list(it)
    check_chat_stream(events, n)
    rc = lx.wait(T(15))
    assert rc is not None, "llmux did not exit after its last stream\n" + lx.describe()
    assert rc == 0, lx.describe()
    lx.stopped = True


def _refused(port):
    try:
        s = socket.create_connection(("127.0.0.1", port), timeout=1)
    except ConnectionRefusedError:
        return True
    except OSError:
        return False
    s.close()
    return False


def test_sigterm_with_idle_keepalive_clients_exits_promptly(procs):
    sim = procs.sim(fast=True)
    lx = procs.llmux([sim])
    clients = [lx.new_client() for _ in range(4)]
    try:
        for c in clients:
            assert c.post(CHAT, json=chat_body(max_tokens=1)).status_code == 200
        # Four idle keep-alive connections (KEEPALIVE default 75 s) are open.
        t0 = time.monotonic()
        lx.signal(signal.SIGTERM)
        rc = lx.wait(T(10))
        elapsed = time.monotonic() - t0
    finally:
        for c in clients:
            c.close()
    assert rc == 0, "llmux exit %r after %.1f s\n%s" % (rc, elapsed, lx.describe())
    lx.stopped = True


def test_sigterm_shutdown_timeout_bounds_a_long_stream(procs):
    sim = procs.sim(decode_ms=50)
    lx = procs.llmux([sim], env={"SHUTDOWN_TIMEOUT_SECONDS": "1"})
    with lx.new_client(timeout=T(20)) as c:
        with c.stream("POST", CHAT, content=stream_body(),
                      headers={"x-sim": "tokens=2000"}) as r:
            it = iter_sse(r)
            next(it)
            t0 = time.monotonic()
            lx.signal(signal.SIGTERM)
            try:
                for _ in it:
                    pass
            except httpx.HTTPError:
                pass  # the connection is cut when the grace period ends
    rc = lx.wait(T(10))
    elapsed = time.monotonic() - t0
    assert rc == 0, "exit %r\n%s" % (rc, lx.describe())
    assert elapsed < T(8), "shutdown took %.1f s with SHUTDOWN_TIMEOUT_SECONDS=1" % elapsed
    lx.stopped = True
    # The node's request was cancelled when the gateway cut the stream.
    wait_for(lambda: sim.stats()["running"] == 0, T(10), what="the sim to stop generating")


def test_stream_error_status_from_node_is_not_an_sse_stream(procs):
    """A node that refuses a streaming request answers JSON; it is passed on."""
    sim = procs.sim(fast=True)
    lx = procs.llmux([sim])
    body = stream_body()
    hdr = {"x-sim": "status=400"}
    direct = sim.client.post(CHAT, content=body, headers=hdr)
    via = lx.client.post(CHAT, content=body, headers=hdr)
    assert via.status_code == direct.status_code == 400
    assert via.json() == node_error_as_openai(direct)
    assert via.headers["content-type"] == "application/json"


def test_response_head_reaches_client_before_first_token(procs):
    """The sim sends its SSE head at once and the first token after ttft_ms:
    the head must not wait for the first token."""
    sim = procs.sim()
    lx = procs.llmux([sim])
    t0 = time.monotonic()
    with lx.client.stream("POST", CHAT, content=stream_body(n_tokens=3),
                          headers={"x-sim": "ttft_ms=1500"}) as r:
        t_head = time.monotonic() - t0
        events = read_sse(r)
    t_end = time.monotonic() - t0
    assert r.status_code == 200
    check_chat_stream(events, 3)
    assert t_end >= 1.2, t_end
    assert t_head < 0.5 * t_end, "head after %.2f s of %.2f s" % (t_head, t_end)


def test_http10_client_gets_a_stream_ended_by_close(procs):
    from e2e_util import RawConn, raw_request
    sim = procs.sim(fast=True)
    lx = procs.llmux([sim])
    body = stream_body(n_tokens=5)
    expect = sim.client.post(CHAT, content=body).content
    c = RawConn(lx.port, timeout=T(10))
    try:
        c.send(raw_request("POST", CHAT, body, version="HTTP/1.0"))
        r = c.read_response()
    finally:
        c.close()
    assert r.status == 200
    assert r.header("transfer-encoding") is None
    assert no_id(r.body) == no_id(expect)


def test_client_disconnect_before_a_non_streaming_answer_cancels(procs):
    sim = procs.sim(decode_ms=50)
    lx = procs.llmux([sim])
    c = socket.create_connection(("127.0.0.1", lx.port), timeout=T(10))
    body = json.dumps(chat_body(max_tokens=200)).encode()
    c.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
              b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
    wait_for(lambda: sim.stats()["running"] == 1, T(10), what="the request to run on the sim")
    c.close()
    st = wait_for(lambda: (lambda s: s if s["running"] == 0 else None)(sim.stats()), T(10),
                  what="the sim to drop the request")
    assert st["aborted_total"] == 1, st
    assert st["completed_total"] == 0, st


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["TERM", "INT"])
def test_signal_stops_gracefully_with_exit_0(procs, sig):
    sim = procs.sim(fast=True)
    lx = procs.llmux([sim])
    assert lx.client.post(CHAT, json=chat_body(max_tokens=1)).status_code == 200
    lx.close_client()
    lx.signal(sig)
    rc = lx.wait(T(10))
    assert rc == 0, "exit %r\n%s" % (rc, lx.describe())
    lx.stopped = True


# ---- usage filtering: llmux may ask a node for stream usage the client did
# not ask for; the client must then get the node's stream minus that event.

def sse_events_bytes(sep=b"\n\n", usage_null=False, n_tokens=4):
    """A chat stream as a node would send it; returns (all events, usage event)."""
    base = '{"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"m",'
    extra = ',"usage":null' if usage_null else ''
    evs = [('data: ' + base + '"choices":[{"index":0,"delta":{"role":"assistant","content":""},'
            '"finish_reason":null}]' + extra + '}').encode()]
    words = ["usage", " data", ":", " [DONE]", " choices", " more"][:n_tokens]
    for i, w in enumerate(words):
        fin = '"length"' if i == len(words) - 1 else 'null'
        evs.append(('data: ' + base + '"choices":[{"index":0,"delta":{"content":%s},'
                    '"finish_reason":%s}]' % (json.dumps(w), fin) + extra + '}').encode())
    usage = ('data: ' + base + '"choices":[],"usage":{"prompt_tokens":3,"total_tokens":%d,'
             '"completion_tokens":%d}}' % (3 + len(words), len(words))).encode()
    done = b"data: [DONE]"
    return [e + sep for e in evs], usage + sep, done + sep


def sse_node(procs, pieces, gap_s=0.0):
    """A node that streams <pieces> (bytes), one HTTP chunk each."""
    def handler(conn, req):
        conn.send(sse_head())
        for p in pieces:
            conn.send(chunk(p))
            if gap_s:
                time.sleep(gap_s)
        conn.send(b"0\r\n\r\n")
        return True
    return procs.pynode(handler)


def split_every(data, n):
    return [data[i:i + n] for i in range(0, len(data), n)]


@pytest.mark.parametrize("sep", [b"\n\n", b"\r\n\r\n"], ids=["lf", "crlf"])
@pytest.mark.parametrize("piece", [7, 1000], ids=["tiny-pieces", "whole"])
def test_injected_usage_event_is_filtered_exactly(procs, sep, piece):
    evs, usage, done = sse_events_bytes(sep=sep)
    stream = b"".join(evs) + usage + done
    node = sse_node(procs, split_every(stream, piece))
    lx = procs.llmux([node])
    r = lx.client.post(CHAT, content=stream_body(n_tokens=4))
    assert r.status_code == 200
    sent = node.posts[-1].body
    if sent == stream_body(n_tokens=4):
        # llmux did not ask for usage: the stream is relayed byte for byte.
        assert r.content == stream
    else:
        assert r.content == b"".join(evs) + done, r.content


def test_usage_the_client_asked_for_is_kept(procs):
    evs, usage, done = sse_events_bytes()
    stream = b"".join(evs) + usage + done
    node = sse_node(procs, split_every(stream, 5))
    lx = procs.llmux([node])
    body = stream_body(n_tokens=4, stream_options={"include_usage": True})
    r = lx.client.post(CHAT, content=body)
    assert r.status_code == 200
    assert node.posts[-1].body == body
    assert r.content == stream


def test_usage_null_fields_do_not_drop_token_events(procs):
    """OpenAI-style nodes put "usage":null in every chunk once usage is asked for."""
    evs, usage, done = sse_events_bytes(usage_null=True)
    stream = b"".join(evs) + usage + done
    node = sse_node(procs, split_every(stream, 11))
    lx = procs.llmux([node])
    with lx.client.stream("POST", CHAT, content=stream_body(n_tokens=4)) as r:
        events = read_sse(r)
    assert events[-1].done
    chunks = [e.json() for e in events[:-1]]
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert text == "usage data: [DONE]", chunks
    assert len(chunks) == 5, chunks


def test_filtered_stream_is_still_incremental(procs):
    evs, usage, done = sse_events_bytes(n_tokens=6)
    node = sse_node(procs, evs + [usage, done], gap_s=0.15)
    lx = procs.llmux([node])
    t0 = time.monotonic()
    with lx.client.stream("POST", CHAT, content=stream_body(n_tokens=6)) as r:
        events = read_sse(r)
    assert events[-1].done and len(events) == 8, events
    first, last = events[0].t - t0, events[-1].t - t0
    assert last >= 0.8, last
    assert first < 0.3 * last, (first, last)


def test_pipelined_requests_after_a_stream_wait_for_it(procs):
    from e2e_util import RawConn, raw_request
    sim = procs.sim(decode_ms=10)
    lx = procs.llmux([sim])
    s1 = stream_body(n_tokens=10)
    plain = json.dumps(chat_body(max_tokens=3)).encode()
    c = RawConn(lx.port, timeout=T(20))
    try:
        c.send(raw_request("POST", CHAT, s1, headers=[("X-Request-Id", "q1")]) +
               raw_request("GET", "/health", headers=[("X-Request-Id", "q2")]) +
               raw_request("POST", CHAT, plain, headers=[("X-Request-Id", "q3")]) +
               raw_request("POST", CHAT, s1, headers=[("X-Request-Id", "q4")]))
        got = [c.read_response() for _ in range(4)]
    finally:
        c.close()
    assert [(r.status, r.header("x-request-id")) for r in got] == \
        [(200, "q1"), (200, "q2"), (200, "q3"), (200, "q4")], got
    assert got[0].body.endswith(b"data: [DONE]\n\n")
    assert no_id(got[0].body) == no_id(got[3].body)
    assert json.loads(got[2].body)["object"] == "chat.completion"
