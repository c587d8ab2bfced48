"""
Small in-process HTTP nodes for end-to-end tests that llmux-sim cannot play:
a node that echoes what llmux forwarded (headers, body digest), and nodes that
misbehave at the protocol level (close early, send garbage, break a stream).

Each node listens on 127.0.0.1:<ephemeral>, serves every connection on its own
daemon thread, records what it saw, and is stopped (listener and every client
socket closed, threads joined with a bound) by the fixture that made it.
"""
import hashlib
import json
import socket
import threading
import time

IO_TIMEOUT_S = 60.0


class NodeRequest:
    """One request as the node received it (head parsed, body read)."""

    def __init__(self, method, target, version, headers, body, conn_index):
        self.method = method
        self.target = target
        self.version = version
        self.headers = headers  # list of (name, value), as received
        self.body = body
        self.conn_index = conn_index  # which accepted connection carried it
        self.raw_head = b""  # the head's bytes as received

    def header(self, name):
        name = name.lower()
        vals = [v for k, v in self.headers if k.lower() == name]
        return vals[0] if vals else None

    def header_all(self, name):
        name = name.lower()
        return [v for k, v in self.headers if k.lower() == name]


class NodeConn:
    """A client connection of a PyNode, with a buffered reader."""

    def __init__(self, sock, index):
        self.sock = sock
        self.index = index
        self.buf = b""

    def recv_more(self):
        data = self.sock.recv(65536)
        if not data:
            raise EOFError("peer closed")
        self.buf += data

    def read_until(self, sep):
        while sep not in self.buf:
            self.recv_more()
        i = self.buf.index(sep) + len(sep)
        out, self.buf = self.buf[:i], self.buf[i:]
        return out

    def read_exact(self, n):
        while len(self.buf) < n:
            self.recv_more()
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def read_request(self):
        """Reads one request; returns a NodeRequest, or None at EOF."""
        try:
            head = self.read_until(b"\r\n\r\n")
        except EOFError:
            return None
        lines = head[:-4].split(b"\r\n")
        method, target, version = lines[0].decode("latin-1").split(" ", 2)
        headers = []
        for line in lines[1:]:
            k, _, v = line.decode("latin-1").partition(":")
            headers.append((k.strip(), v.strip()))
        req = NodeRequest(method, target, version, headers, b"", self.index)
        req.raw_head = head
        te = req.header("transfer-encoding")
        if te and "chunked" in te.lower():
            body = b""
            while True:
                size_line = self.read_until(b"\r\n")
                size = int(size_line.split(b";")[0].strip(), 16)
                if size == 0:
                    self.read_until(b"\r\n")
                    break
                body += self.read_exact(size)
                self.read_exact(2)
            req.body = body
        else:
            cl = req.header("content-length")
            req.body = self.read_exact(int(cl)) if cl else b""
        return req

    def send(self, data):
        self.sock.sendall(data)


def http_response(status, body, content_type="application/json", headers=(), reason="X"):
    """A complete HTTP/1.1 response with Content-Length."""
    head = "HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %d\r\n" % (
        status, reason, content_type, len(body))
    for k, v in headers:
        head += "%s: %s\r\n" % (k, v)
    return head.encode() + b"\r\n" + body


class PyNode:
    """
    A threaded HTTP/1.1 node. <handler>(conn, req) answers one request and
    returns True to keep the connection for the next one. <on_connect>(conn),
    when given, takes over the connection before any request is read (for
    nodes that misbehave before parsing anything).
    """

    def __init__(self, handler=None, on_connect=None):
        self.handler = handler or echo_handler
        self.on_connect = on_connect
        self.requests = []
        self.connections = 0
        self.errors = []
        self._lock = threading.Lock()
        self._socks = []
        self._threads = []
        self._closing = False
        self.stopping = threading.Event()  # set by close(): handlers that wait use it
        self.lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.lsock.bind(("127.0.0.1", 0))
        self.lsock.listen(512)
        self.port = self.lsock.getsockname()[1]
        self.url = "http://127.0.0.1:%d" % self.port
        self._acceptor = threading.Thread(target=self._accept_loop, daemon=True)
        self._acceptor.start()

    @property
    def posts(self):
        """The proxied inference requests (llmux's health probes and metrics
        scrapes are GETs)."""
        with self._lock:
            return [r for r in self.requests if r.method == "POST"]

    def _accept_loop(self):
        while not self._closing:
            try:
                s, _ = self.lsock.accept()
            except OSError:
                return
            s.settimeout(IO_TIMEOUT_S)
            with self._lock:
                if self._closing:
                    s.close()
                    return
                index = self.connections
                self.connections += 1
                self._socks.append(s)
                t = threading.Thread(target=self._serve, args=(NodeConn(s, index),), daemon=True)
                self._threads.append(t)
            t.start()

    def _serve(self, conn):
        try:
            if self.on_connect:
                self.on_connect(conn)
                return
            while True:
                req = conn.read_request()
                if req is None:
                    return
                with self._lock:
                    self.requests.append(req)
                if not self.handler(conn, req):
                    return
        except (OSError, EOFError, ValueError) as e:
            if not self._closing:
                self.errors.append(repr(e))
        finally:
            try:
                conn.sock.close()
            except OSError:
                pass

    def close(self):
        self._closing = True
        self.stopping.set()
        try:
            # shutdown() wakes a thread blocked in accept(); close() alone does not.
            self.lsock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        try:
            self.lsock.close()
        except OSError:
            pass
        with self._lock:
            socks, threads = list(self._socks), list(self._threads)
        for s in socks:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            try:
                s.close()
            except OSError:
                pass
        deadline = time.monotonic() + 5
        self._acceptor.join(max(0.1, deadline - time.monotonic()))
        for t in threads:
            t.join(max(0.1, deadline - time.monotonic()))


def echo_handler(conn, req):
    """Answers 200 with a JSON description of the request it received."""
    body = json.dumps({
        "method": req.method,
        "target": req.target,
        "version": req.version,
        "headers": req.headers,
        "body_len": len(req.body),
        "body_sha256": hashlib.sha256(req.body).hexdigest(),
        "body_head": req.body[:256].decode("utf-8", "replace"),
        "conn_index": req.conn_index,
    }).encode()
    conn.send(http_response(200, body, headers=[("X-Echo-Node", "1")]))
    return True
