"""
Helpers shared by the end-to-end tests: reading SSE incrementally from an
httpx streaming response, a raw-socket HTTP/1.1 client (for pipelining,
partial heads, Expect: 100-continue, HTTP/1.0), and bounded polling.
"""
import json
import socket
import time


def wait_for(pred, timeout, interval=0.02, what="condition"):
    """Polls <pred>() until it returns a truthy value or <timeout> s pass."""
    deadline = time.monotonic() + timeout
    last = None
    while True:
        last = pred()
        if last:
            return last
        if time.monotonic() >= deadline:
            raise AssertionError("timed out after %.1f s waiting for %s (last: %r)"
                                 % (timeout, what, last))
        time.sleep(interval)


class SseEvent:
    def __init__(self, raw, t):
        self.raw = raw  # bytes of the event, without the blank line
        self.t = t      # time.monotonic() when its last byte arrived
        self.data = b"\n".join(line[5:].lstrip(b" ") for line in raw.split(b"\n")
                               if line.startswith(b"data:"))

    @property
    def done(self):
        return self.data == b"[DONE]"

    def json(self):
        return json.loads(self.data)

    def __repr__(self):
        return "SseEvent(%r)" % self.raw[:200]


def iter_sse(resp):
    """
    Yields SseEvent objects from an httpx streaming response as their bytes
    arrive (iter_raw: no buffering of the whole body).
    """
    buf = b""
    for chunk in resp.iter_raw():
        t = time.monotonic()
        buf += chunk.replace(b"\r\n", b"\n")
        while b"\n\n" in buf:
            ev, buf = buf.split(b"\n\n", 1)
            if ev.strip():
                yield SseEvent(ev, t)
    if buf.strip():
        # Trailing bytes without the blank line: report them as an event so
        # that a test can see the stream ended mid-event.
        yield SseEvent(buf, time.monotonic())


def read_sse(resp):
    return list(iter_sse(resp))


# ---- raw HTTP/1.1 over a socket -------------------------------------------

class RawResponse:
    def __init__(self, version, status, reason, headers, body):
        self.version = version
        self.status = status
        self.reason = reason
        self.headers = headers  # list of (name, value)
        self.body = body

    def header(self, name):
        name = name.lower()
        for k, v in self.headers:
            if k.lower() == name:
                return v
        return None

    def json(self):
        return json.loads(self.body)

    def __repr__(self):
        return "RawResponse(%d, %r, %r)" % (self.status, self.headers, self.body[:300])


class RawConn:
    """A client socket with a buffered HTTP/1.1 response reader."""

    def __init__(self, port, timeout=30.0, host="127.0.0.1", rcvbuf=None):
        if rcvbuf is None:
            self.sock = socket.create_connection((host, port), timeout=timeout)
        else:
            # A small receive buffer (set before connect, so the window is
            # small from the start) makes the server's output back up.
            self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            self.sock.settimeout(timeout)
            try:
                self.sock.connect((host, port))
            except OSError:
                self.sock.close()
                raise
        self.buf = b""
        self.eof = False

    def send(self, data):
        self.sock.sendall(data)

    def _more(self):
        data = self.sock.recv(65536)
        if not data:
            self.eof = True
            raise EOFError("server closed the connection; buffered: %r" % self.buf[:300])
        self.buf += data

    def _until(self, sep):
        while sep not in self.buf:
            self._more()
        i = self.buf.index(sep) + len(sep)
        out, self.buf = self.buf[:i], self.buf[i:]
        return out

    def _exact(self, n):
        while len(self.buf) < n:
            self._more()
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def read_head(self):
        head = self._until(b"\r\n\r\n")
        lines = head[:-4].decode("latin-1").split("\r\n")
        version, status, reason = (lines[0].split(" ", 2) + [""])[:3]
        headers = []
        for line in lines[1:]:
            k, _, v = line.partition(":")
            headers.append((k.strip(), v.strip()))
        return version, int(status), reason, headers

    def read_response(self, head_request=False):
        """Reads one response (skips nothing: a 100 Continue is returned too)."""
        version, status, reason, headers = self.read_head()
        r = RawResponse(version, status, reason, headers, b"")
        if head_request or status < 200 or status in (204, 304):
            return r
        te = r.header("transfer-encoding")
        cl = r.header("content-length")
        if te and "chunked" in te.lower():
            body = b""
            while True:
                size = int(self._until(b"\r\n").split(b";")[0].strip(), 16)
                if size == 0:
                    # Trailers (none expected), then the final CRLF.
                    while self._until(b"\r\n") != b"\r\n":
                        pass
                    break
                body += self._exact(size)
                assert self._exact(2) == b"\r\n", "chunk not followed by CRLF"
            r.body = body
        elif cl is not None:
            r.body = self._exact(int(cl))
        else:
            r.body = self.read_to_eof()
        return r

    def read_to_eof(self):
        while True:
            try:
                self._more()
            except EOFError:
                break
        out, self.buf = self.buf, b""
        return out

    def is_closed_by_peer(self, timeout):
        """True when the server closes the connection within <timeout> s
        (any bytes it sends before are kept in the buffer)."""
        self.sock.settimeout(timeout)
        try:
            while True:
                data = self.sock.recv(65536)
                if not data:
                    return True
                self.buf += data
        except socket.timeout:
            return False
        except ConnectionResetError:
            return True

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


def raw_request(method, path, body=b"", headers=(), version="HTTP/1.1", host="127.0.0.1"):
    """Builds the bytes of one request with Content-Length (when a body or POST)."""
    lines = ["%s %s %s" % (method, path, version), "Host: %s" % host]
    names = {k.lower() for k, _ in headers}
    for k, v in headers:
        lines.append("%s: %s" % (k, v))
    if (body or method == "POST") and "content-length" not in names and \
            "transfer-encoding" not in names:
        lines.append("Content-Length: %d" % len(body))
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def chat_body(content="Hello there", model="sim-model", stream=False, max_tokens=None, **extra):
    obj = {"model": model, "messages": [{"role": "user", "content": content}]}
    if stream:
        obj["stream"] = True
    if max_tokens is not None:
        obj["max_tokens"] = max_tokens
    obj.update(extra)
    return obj


def completion_body(prompt="Once upon a time", model="sim-model", stream=False, max_tokens=None,
                    **extra):
    obj = {"model": model, "prompt": prompt}
    if stream:
        obj["stream"] = True
    if max_tokens is not None:
        obj["max_tokens"] = max_tokens
    obj.update(extra)
    return obj


def node_error_as_openai(resp):
    """What llmux makes of a node's error answer <resp> (error_shape.h): in
    OpenAI's shape already, unchanged; vLLM's top-level fields, moved under
    "error"."""
    j = resp.json()
    if isinstance(j.get("error"), dict):
        return j
    return {"error": {"message": j["message"], "type": j.get("type"),
                      "param": j.get("param"), "code": j.get("code", resp.status_code)}}


def assert_openai_error(resp_json, status=None):
    """Checks the OpenAI error shape the gateway produces."""
    assert isinstance(resp_json, dict) and "error" in resp_json, resp_json
    err = resp_json["error"]
    assert isinstance(err.get("message"), str) and err["message"], resp_json
    assert isinstance(err.get("type"), str) and err["type"], resp_json
    assert "code" in err, resp_json
    assert "param" in err, resp_json
    return err
