"""
Regression tests for the security and robustness review (findings H1-H4,
D1-D5 and the lower-severity ones), and for llmux-sim's keep-alive timer.

Each test names its finding in its docstring and asserts the fixed
behaviour; every one ends by checking that llmux is still alive and answers
a normal request. All sockets have timeouts and every loop a bound, so a
server that hangs makes a test fail, never stall.
"""
import json
import select
import socket
import time

import pytest

from conftest import T
from e2e_util import RawConn

CHAT = "/v1/chat/completions"


# ---- helpers -----------------------------------------------------------------

def rss_mib(pid):
    """Resident set size of <pid> in MiB (VmRSS in /proc/<pid>/status)."""
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    raise AssertionError("no VmRSS for pid %d" % pid)


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
