"""benchlib.py - shared helpers of bench/compare, routing, profile, attack, soak and chaos.

Starts and stops llmux-sim nodes, llmux, nginx and HAProxy (each from its own
config file in a private temp dir, pinned with taskset, stopped by PID only),
runs llmux-bench and reads its JSON, reads a process's CPU time and RSS from
/proc, reads Prometheus counters, and sends streamed chat requests through
httpx (stream_chat). Standard library only, but for httpx in stream_chat;
runs under /usr/bin/python3.
"""
import http.client
import json
import os
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HZ = os.sysconf("SC_CLK_TCK")

# Settings llmux reads from the environment: never inherit them from the
# caller's shell, so a benchmark runs the configuration it prints.
LLMUX_ENV = {
    "VLLM_NODES", "ROUTING_STRATEGY", "NODE_TIMEOUT_SECONDS", "CONNECT_TIMEOUT_SECONDS",
    "MAX_RETRIES", "HEALTH_CHECK_INTERVAL_SECONDS", "HEALTH_FAILURE_THRESHOLD",
    "GATEWAY_HOST", "GATEWAY_PORT", "AUTH_TOKEN", "MODEL_NAME", "MAX_CONCURRENT_REQUESTS",
    "MAX_QUEUE_SIZE", "LLMUX_CONFIG", "QUEUE_TIMEOUT_SECONDS", "WORKERS",
    "METRICS_UPDATE_INTERVAL_SECONDS", "ADMIN_TOKEN", "MAX_BODY_BYTES", "HEALTH_CHECK_PATH",
    "HEALTH_RECOVERY_THRESHOLD", "STREAM_IDLE_TIMEOUT_SECONDS", "LOG_LEVEL", "ACCESS_LOG",
    "STREAM_RESUME", "HEDGE_AFTER_SECONDS", "RETRY_BUDGET_PERCENT", "RETRY_BUDGET_MIN_PER_SECOND",
}


def log(*a):
    print(*a, file=sys.stderr, flush=True)


# ---- set-up ---------------------------------------------------------------

def bin_dir():
    """bin/ after `make all`, or $LLMUX_BIN_DIR as it is (no build)."""
    d = os.environ.get("LLMUX_BIN_DIR")
    if d:
        return os.path.abspath(d)
    r = subprocess.run(["make", "--no-print-directory", "-C", ROOT, "all"],
                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if r.returncode != 0:
        sys.exit("make all failed:\n" + r.stderr)
    return os.path.join(ROOT, "bin")


def need(tools):
    """tool -> Debian package; installs missing ones when root (as bench/relay.sh)."""
    missing = {t: p for t, p in tools.items() if not shutil.which(t)}
    if missing and os.geteuid() == 0:
        pk = sorted(set(missing.values()))
        log("installing " + " ".join(pk))
        subprocess.run(["apt-get", "install", "-y", "-qq"] + pk,
                       stdout=subprocess.DEVNULL, env=dict(os.environ, DEBIAN_FRONTEND="noninteractive"))
        missing = {t: p for t, p in missing.items() if not shutil.which(t)}
    if missing:
        sys.exit("missing tools: " + ", ".join(missing) + "; apt-get install " +
                 " ".join(sorted(set(missing.values()))))
    return {t: shutil.which(t) for t in tools}


def exit_on_term():
    """SIGTERM/SIGHUP raise SystemExit, so that the caller's `finally` stops
    every process it started (they run in their own sessions)."""
    def bye(sig, frame):
        raise SystemExit(128 + sig)
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, bye)


def raise_nofile():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def pin_self(core):
    try:
        os.sched_setaffinity(0, {core})
    except OSError:
        pass


def machine():
    model = ""
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"nproc": os.cpu_count(), "cpu_model": model, "kernel": os.uname().release,
            "loadavg_start": open("/proc/loadavg").read().split()[:3]}


def git_rev():
    """The commit the binaries were built from: $LLMUX_BIN_REV when the
    binaries come from $LLMUX_BIN_DIR (say which), else the tree's HEAD."""
    if os.environ.get("LLMUX_BIN_DIR"):
        return os.environ.get("LLMUX_BIN_REV", "binaries from " + os.environ["LLMUX_BIN_DIR"])
    r = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"],
                       capture_output=True, text=True)
    dirty = subprocess.run(["git", "-C", ROOT, "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True).stdout.strip()
    return (r.stdout.strip() or "?") + ("+dirty" if dirty else "")


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def wait_port(port, timeout=10.0):
    end = time.time() + timeout
    while time.time() < end:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return True
        except OSError:
            time.sleep(0.05)
    return False


# ---- processes -------------------------------------------------------------

class Procs:
    """Every process this run started, stopped by PID (never by name)."""

    def __init__(self, tmp):
        self.tmp = tmp
        self.procs = []

    def start(self, name, argv, core=None, env=None, cwd=None):
        if core is not None:
            argv = ["taskset", "-c", str(core)] + argv
        out = open(os.path.join(self.tmp, name + ".out"), "w")
        err = open(os.path.join(self.tmp, name + ".err"), "w")
        p = subprocess.Popen(argv, stdout=out, stderr=err, stdin=subprocess.DEVNULL,
                             env=env, cwd=cwd or self.tmp, start_new_session=True)
        p.name = name
        self.procs.append(p)
        return p

    def read(self, name, stream="out"):
        try:
            return open(os.path.join(self.tmp, name + "." + stream)).read()
        except OSError:
            return ""

    def wait_line(self, p, stream, regex, timeout=10.0):
        end = time.time() + timeout
        while time.time() < end:
            m = re.search(regex, self.read(p.name, stream))
            if m:
                return m
            if p.poll() is not None:
                break
            time.sleep(0.03)
        raise RuntimeError("%s did not start: %s%s" % (p.name, self.read(p.name, "out")[-500:],
                                                       self.read(p.name, "err")[-1500:]))

    def stop(self, p, sig=signal.SIGTERM, timeout=10.0):
        if p.poll() is None:
            try:
                os.kill(p.pid, sig)
            except ProcessLookupError:
                pass
            try:
                p.wait(timeout)
            except subprocess.TimeoutExpired:
                os.kill(p.pid, signal.SIGKILL)
                p.wait()
        # nginx's worker is a child of its master: gone with it (master waits for it).
        if p in self.procs:
            self.procs.remove(p)

    def stop_all(self):
        for p in list(reversed(self.procs)):
            try:
                self.stop(p, timeout=5)
            except Exception:  # noqa: BLE001 - clean-up must go on
                pass


def children(pid):
    try:
        with open("/proc/%d/task/%d/children" % (pid, pid)) as f:
            return [int(x) for x in f.read().split()]
    except OSError:
        return []


def cpu_ticks(pid):
    """utime + stime of the process (all its threads, not its children), in ticks."""
    with open("/proc/%d/stat" % pid) as f:
        s = f.read()
    fields = s[s.rindex(")") + 2:].split()
    return int(fields[11]) + int(fields[12])


def cpu_ticks_split(pid):
    """(utime, stime) of the process, in ticks."""
    with open("/proc/%d/stat" % pid) as f:
        s = f.read()
    fields = s[s.rindex(")") + 2:].split()
    return int(fields[11]), int(fields[12])


def rss_kib(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def fd_count(pid):
    """Open descriptors of a process (entries of /proc/PID/fd); None once it is gone."""
    try:
        return len(os.listdir("/proc/%d/fd" % pid))
    except OSError:
        return None


class Sampler:
    """A thread that reads a process's VmRSS and descriptor count (and the
    descriptor count of other processes, e.g. the nodes) every <interval>
    seconds, at most <max_seconds>, into samples: (time.monotonic(), rss KiB,
    fds, other fds). A process that is gone gives None."""

    def __init__(self, pid, interval=1.0, max_seconds=7200.0, others=lambda: ()):
        self.pid, self.interval, self.max_seconds, self.others = pid, interval, max_seconds, others
        self.samples = []
        self.stop_ev = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def sample(self):
        try:
            rss = rss_kib(self.pid)
        except OSError:
            rss = None
        ofd = [fd_count(p) for p in self.others()]
        s = (time.monotonic(), rss, fd_count(self.pid), sum(x for x in ofd if x is not None))
        self.samples.append(s)
        return s

    def _run(self):
        end = time.monotonic() + self.max_seconds
        while not self.stop_ev.is_set() and time.monotonic() < end:
            self.sample()
            self.stop_ev.wait(self.interval)

    def start(self):
        self.thread.start()
        return self

    def stop(self):
        self.stop_ev.set()
        self.thread.join(self.interval + 5)

    def window(self, t0, t1):
        return [s for s in self.samples if t0 <= s[0] < t1]


def peak(samples, i):
    xs = [s[i] for s in samples if s[i] is not None]
    return max(xs) if xs else None


# ---- HTTP helpers ----------------------------------------------------------

def httpx_nodelay():
    """Makes httpx's sync clients set TCP_NODELAY on their connections.
    httpx 0.23 (Debian's python3-httpx) writes a request's head and body in
    two send()s without it, so Nagle holds the body until the server's
    delayed ACK: ~40 ms added to every request on loopback, more or less
    depending on the server's ACKs. Real clients (curl, aiohttp) set it; so
    do tests/e2e (conftest.py calls this) and the generators here."""
    try:
        from httpcore.backends import sync as hc_sync
    except ImportError:       # another httpcore: nothing to patch
        return
    orig = hc_sync.SyncBackend.connect_tcp
    if getattr(orig, "_llmux_nodelay", False):
        return

    def connect_tcp(self, *a, **kw):
        stream = orig(self, *a, **kw)
        sock = getattr(stream, "_sock", None)
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return stream
    connect_tcp._llmux_nodelay = True
    hc_sync.SyncBackend.connect_tcp = connect_tcp


def http_get(port, path, timeout=5.0):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        c.request("GET", path)
        r = c.getresponse()
        return r.status, r.read().decode("utf-8", "replace")
    finally:
        c.close()


def sim_stats(port):
    return json.loads(http_get(port, "/sim/stats")[1])


def prom_samples(port, names):
    """{name: {labels: value}} of the families <names> in the /metrics of
    the server on <port>; labels is the text between the braces ("" when
    none), e.g. 'outcome="resumed"'. A family without a sample is {}."""
    text = http_get(port, "/metrics")[1]
    vals = {n: {} for n in names}
    for line in text.splitlines():
        m = re.match(r'([^\s{#]+)(?:\{(.*)\})?\s+(\S+)$', line)
        if m and m.group(1) in vals:
            vals[m.group(1)][m.group(2) or ""] = float(m.group(3))
    return vals


def sim_prefix_counters(port):
    """(hits, queries) from vLLM's counter names in /metrics."""
    names = ("vllm:prefix_cache_hits_total", "vllm:prefix_cache_queries_total")
    vals = prom_samples(port, names)
    return tuple(sum(vals[n].values()) for n in names)


def stream_chat(client, url, body, headers=None):
    """One streamed chat request on the httpx <client> to <url> (a base
    URL), read to its end. Never raises for what the server or the network
    does; returns a dict:
      status      the HTTP status, None when no response head came
      done        data: [DONE] was seen
      error       the "error" object of an error event, if one came
      exc         the name of the exception that ended it, if one did
      ttft        s from the request to the first non-empty content delta
      text        the content deltas, joined, as they came
      deltas      content deltas; roles: deltas that carry a role
      ids         the distinct "id"s of the chunks, in order
      usage       the usage chunk's usage, if any
      max_gap     longest wait between two content deltas, s
      seconds     the whole request, s
      node, request_id   llmux's X-Routed-Node and X-Request-Id, if any"""
    t0 = time.monotonic()
    r = {"status": None, "done": False, "error": None, "exc": None, "ttft": None, "text": "",
         "deltas": 0, "roles": 0, "ids": [], "usage": None, "max_gap": 0.0, "seconds": None,
         "node": None, "request_id": None}
    parts, last = [], None
    try:
        with client.stream("POST", url + "/v1/chat/completions", json=body, headers=headers) as resp:
            r.update(status=resp.status_code, node=resp.headers.get("x-routed-node"),
                     request_id=resp.headers.get("x-request-id"))
            if resp.status_code != 200:
                resp.read()
                return r
            for line in resp.iter_lines():
                line = line.rstrip("\r\n")   # httpx 0.23 keeps the line ends
                if line == "data: [DONE]":
                    r["done"] = True
                elif line.startswith("data: {"):
                    ev = json.loads(line[6:])
                    if "error" in ev:
                        r["error"] = ev["error"]
                        continue
                    if ev.get("id") and ev["id"] not in r["ids"]:
                        r["ids"].append(ev["id"])
                    if ev.get("usage"):
                        r["usage"] = ev["usage"]
                    choices = ev.get("choices")
                    delta = choices[0].get("delta", {}) if choices else {}
                    r["roles"] += "role" in delta
                    if delta.get("content"):
                        now = time.monotonic()
                        if last is None:
                            r["ttft"] = now - t0
                        else:
                            r["max_gap"] = max(r["max_gap"], now - last)
                        last = now
                        r["deltas"] += 1
                        parts.append(delta["content"])
    except Exception as e:  # noqa: BLE001 - a failure is a result
        r["exc"] = type(e).__name__
    r["text"] = "".join(parts)
    r["seconds"] = time.monotonic() - t0
    return r


def chat_once(port, body, timeout=10.0, path="/v1/chat/completions"):
    """One non-streamed POST on a new connection (as a new client comes);
    returns (ok, status or exception name, latency s). ok: 200 with a body
    that has "choices", within <timeout> in all."""
    t0 = time.monotonic()
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        c.request("POST", path, body, {"Content-Type": "application/json"})
        r = c.getresponse()
        data = r.read()
        ok, st = r.status == 200 and b'"choices"' in data, r.status
    except Exception as e:  # noqa: BLE001 - a failure is a result
        ok, st = False, type(e).__name__
    finally:
        c.close()
    lat = time.monotonic() - t0
    if ok and lat > timeout:
        ok, st = False, "slow"
    return ok, st, lat


class OpenLoop:
    """Open-loop traffic: fn() started every 1/<rate> s, each in its own
    thread, whether or not earlier calls returned (a stalled server shows
    as failures and latency, not as a lower send rate). At most <max_inflight>
    at once (a call due beyond that is recorded as ("skipped")); stops after
    <max_seconds> or stop(). results: (start time.monotonic(), ok, status, latency s)."""

    def __init__(self, rate, fn, max_seconds, max_inflight=200):
        self.rate, self.fn, self.max_seconds, self.max_inflight = rate, fn, max_seconds, max_inflight
        self.results = []
        self.lock = threading.Lock()
        self.inflight = threading.BoundedSemaphore(max_inflight)
        self.stop_ev = threading.Event()
        self.threads = []
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _one(self, t):
        try:
            ok, st, lat = self.fn()
        except Exception as e:  # noqa: BLE001
            ok, st, lat = False, type(e).__name__, time.monotonic() - t
        finally:
            self.inflight.release()
        with self.lock:
            self.results.append((t, ok, st, lat))

    def _run(self):
        t0 = time.monotonic()
        i = 0
        while not self.stop_ev.is_set():
            due = t0 + i / self.rate
            if due - t0 >= self.max_seconds:
                break
            self.stop_ev.wait(max(0.0, due - time.monotonic()))
            if self.stop_ev.is_set():
                break
            i += 1
            t = time.monotonic()
            if not self.inflight.acquire(blocking=False):
                with self.lock:
                    self.results.append((t, False, "skipped", 0.0))
                continue
            th = threading.Thread(target=self._one, args=(t,), daemon=True)
            th.start()
            self.threads = [x for x in self.threads if x.is_alive()] + [th]

    def start(self):
        self.thread.start()
        return self

    def stop(self, wait=30.0):
        """Stops sending and waits (bounded) for the calls in flight."""
        self.stop_ev.set()
        self.thread.join(5)
        end = time.monotonic() + wait
        for th in list(self.threads):
            th.join(max(0.0, end - time.monotonic()))

    def window(self, t0, t1):
        with self.lock:
            return [r for r in self.results if t0 <= r[0] < t1]


def outcome(results):
    """Success rate and latency of OpenLoop results."""
    ok = sorted(r[3] * 1000 for r in results if r[1])
    fails = {}
    for r in results:
        if not r[1]:
            fails[str(r[2])] = fails.get(str(r[2]), 0) + 1
    return {"n": len(results), "ok": len(ok),
            "ok_pct": 100.0 * len(ok) / len(results) if results else None,
            "p50_ms": pct(ok, 0.5), "p99_ms": pct(ok, 0.99), "max_ms": ok[-1] if ok else None,
            "failures": fails}


def version_line(argv):
    """First line a program prints for its version (or "?")."""
    try:
        r = subprocess.run(argv, capture_output=True, text=True, timeout=5)
        return (r.stdout + r.stderr).strip().splitlines()[0]
    except Exception:  # noqa: BLE001
        return "?"


def haproxy_maxconn(nofile):
    """HAProxy reserves two descriptors per connection (client + server side)
    and cannot go past the hard limit: its maxconn is (limit - 20) / 2."""
    return min(9990, (nofile - 20) // 2)


# ---- servers ---------------------------------------------------------------

def port_free(port):
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", port))   # fails on a listener, SO_REUSEPORT or not
        return True
    except OSError:
        return False
    finally:
        s.close()


def fixed_ports(base, n, step=10, tries=50):
    """n consecutive free ports from base (else base+step, ...): hash-based
    routing keys on node addresses, so the same ports give the same placement."""
    for k in range(tries):
        ports = [base + k * step + i for i in range(n)]
        if all(port_free(p) for p in ports):
            return ports
    raise RuntimeError("no %d free ports from %d" % (n, base))


class Sim:
    def __init__(self, procs, bins, name, args, core=1, port=0):
        self.name = name
        self.p = procs.start(name, [os.path.join(bins, "llmux-sim"), "--port", str(port), "--name", name,
                                    "--log-level", "warn"] + args, core=core)
        m = procs.wait_line(self.p, "out", r"listening on [\d.]+:(\d+)")
        self.port = int(m.group(1))
        self.url = "http://127.0.0.1:%d" % self.port


def start_sims(procs, bins, prefix, n, args, core=1, ports=None):
    return [Sim(procs, bins, "%s%d" % (prefix, i + 1), args, core, ports[i] if ports else 0)
            for i in range(n)]


def llmux_env():
    return {k: v for k, v in os.environ.items() if k not in LLMUX_ENV}


class Llmux:
    """llmux --workers 1 (or <workers>; None: llmux's default, one per CPU)
    with a JSON config of pools {model: (strategy, [sims])}."""

    def __init__(self, procs, bins, name, pools, flags=(), core=1, wrap=(), timeout=10.0, workers=1,
                 env=None):
        self.name = name
        conf = {"models": {m: {"servers": [{"url": s.url, "name": s.name} for s in sims],
                               "strategy": strat}
                           for m, (strat, sims) in pools.items()}}
        path = os.path.join(procs.tmp, name + ".json")
        with open(path, "w") as f:
            json.dump(conf, f, indent=1)
        argv = list(wrap) + [os.path.join(bins, "llmux"), "--config", path, "--listen", "127.0.0.1:0",
                             "--log-level", "warn"] + list(flags)
        if workers:
            argv += ["--workers", str(workers)]
        self.p = procs.start(name, argv, core=core, env=dict(llmux_env(), **(env or {})))
        m = procs.wait_line(self.p, "err", r"listening on http://[^ ]*:(\d+)", timeout)
        self.port = int(m.group(1))
        self.pid = self.p.pid
        self.ports = {m: self.port for m in pools}


NGINX_HEAD = """daemon off;
master_process {master};
worker_processes 1;
worker_rlimit_nofile {nofile};
pid {tmp}/{name}.pid;
error_log {tmp}/{name}-error.log warn;
events {{ worker_connections {conns}; }}
http {{
  access_log off;
  client_body_temp_path {tmp}/{name}-body;
  proxy_temp_path {tmp}/{name}-proxy;
  fastcgi_temp_path {tmp}/{name}-fastcgi;
  uwsgi_temp_path {tmp}/{name}-uwsgi;
  scgi_temp_path {tmp}/{name}-scgi;
  keepalive_timeout 300s;
  keepalive_requests 1000000;
  client_max_body_size 64m;
"""

# One upstream + server per pool. The proxy settings are nginx's documented
# keep-alive upstream recipe (ngx_http_upstream_module "keepalive") plus no
# buffering either way, as for SSE / LLM token streams.
NGINX_POOL = """  upstream {model} {{
    {balance}
{servers}
    keepalive 256;
    keepalive_requests 1000000;
    keepalive_timeout 60s;
  }}
  server {{
    listen 127.0.0.1:{port} backlog=4096;
    location / {{
      proxy_pass http://{model};
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_buffering off;
      proxy_request_buffering off;
      proxy_read_timeout 3600s;
      proxy_send_timeout 3600s;
    }}
  }}
"""


class Nginx:
    """nginx, one worker; pools {model: (balance directive, [sims])}; one port per pool."""

    def __init__(self, procs, name, pools, core=1, nofile=20000, wrap=(), master=True, timeout=10.0):
        self.name = name
        tmp = procs.tmp
        conf = NGINX_HEAD.format(tmp=tmp, name=name, nofile=nofile, conns=nofile - 1000,
                                 master="on" if master else "off")
        self.ports = {}
        for model, (balance, sims) in pools.items():
            port = free_port()
            self.ports[model] = port
            servers = "\n".join("    server 127.0.0.1:%d;" % s.port for s in sims)
            conf += NGINX_POOL.format(model=re.sub(r"\W", "_", model), balance=balance,
                                      servers=servers, port=port)
        conf += "}\n"
        path = os.path.join(tmp, name + ".conf")
        with open(path, "w") as f:
            f.write(conf)
        self.p = procs.start(name, list(wrap) + [shutil.which("nginx"), "-p", tmp, "-c", path, "-e",
                                                 os.path.join(tmp, name + "-error.log")], core=core)
        for port in self.ports.values():
            if not wait_port(port, timeout):
                raise RuntimeError("nginx did not start: " +
                                   open(os.path.join(tmp, name + "-error.log")).read()[-2000:])
        # The worker does the work: measure it, not the master.
        self.pid = self.p.pid
        if master:
            end = time.time() + 5
            while not children(self.p.pid) and time.time() < end:
                time.sleep(0.05)
            self.pid = children(self.p.pid)[0]
        self.port = next(iter(self.ports.values()))


HAPROXY_HEAD = """global
  nbthread 1
  maxconn {maxconn}
  pidfile {tmp}/{name}.pid
defaults
  mode http
  timeout connect 10s
  timeout client 300s
  timeout server 3600s
  timeout http-request 30s
  timeout http-keep-alive 300s
  option http-keep-alive
  # HAProxy's own advice for token streams: TCP_NODELAY, no MSG_MORE
  # coalescing (else events wait up to ~200 ms in the kernel).
  option http-no-delay
  http-reuse always
  maxconn {maxconn}
"""

HAPROXY_POOL = """frontend fe_{model}
  bind 127.0.0.1:{port}
  default_backend be_{model}
backend be_{model}
  {balance}
{servers}
"""


class Haproxy:
    """haproxy, one thread; pools {model: (balance lines, [sims])}; one port per pool."""

    def __init__(self, procs, name, pools, core=1, maxconn=9990, wrap=(), timeout=10.0):
        self.name = name
        tmp = procs.tmp
        conf = HAPROXY_HEAD.format(tmp=tmp, name=name, maxconn=maxconn)
        self.ports = {}
        for model, (balance, sims) in pools.items():
            port = free_port()
            self.ports[model] = port
            servers = "\n".join("  server %s 127.0.0.1:%d" % (s.name, s.port) for s in sims)
            conf += HAPROXY_POOL.format(model=re.sub(r"\W", "_", model), balance=balance,
                                        servers=servers, port=port)
        path = os.path.join(tmp, name + ".cfg")
        with open(path, "w") as f:
            f.write(conf)
        self.p = procs.start(name, list(wrap) + [shutil.which("haproxy"), "-f", path, "-db"], core=core)
        for port in self.ports.values():
            if not wait_port(port, timeout):
                raise RuntimeError("haproxy did not start: " + procs.read(name, "err")[-2000:])
        self.pid = self.p.pid
        self.port = next(iter(self.ports.values()))


# ---- llmux-bench -----------------------------------------------------------

def start_bench(bins, tmp, url, args, core=0, label="b"):
    """llmux-bench run ... in the background; finish_bench() waits and reads it."""
    out = os.path.join(tmp, label + ".json")
    if os.path.exists(out):
        os.unlink(out)
    argv = ["taskset", "-c", str(core), os.path.join(bins, "llmux-bench"), "run",
            "--base-url", url, "--no-progress", "--output", out] + list(args)
    p = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    return p, out


def finish_bench(started, timeout=600):
    p, out = started
    _, err = p.communicate(timeout=timeout)
    if not os.path.exists(out):
        raise RuntimeError("llmux-bench failed (%d): %s" % (p.returncode, (err or "")[-800:]))
    with open(out) as f:
        j = json.load(f)
    os.unlink(out)
    runs = j["runs"]
    return runs.get("concurrent") or runs.get("naive")


def run_bench(bins, tmp, url, args, core=0, label="b", timeout=600):
    """llmux-bench run ... --output JSON (pinned to <core>, unless None);
    returns the phase dict (concurrent or naive)."""
    out = os.path.join(tmp, label + ".json")
    argv = (["taskset", "-c", str(core)] if core is not None else []) + [
        os.path.join(bins, "llmux-bench"), "run", "--base-url", url, "--no-progress",
        "--output", out] + list(args)
    r = subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                       timeout=timeout)
    if not os.path.exists(out):
        raise RuntimeError("llmux-bench failed (%d): %s" % (r.returncode, r.stderr[-800:]))
    with open(out) as f:
        j = json.load(f)
    os.unlink(out)
    runs = j["runs"]
    return runs.get("concurrent") or runs.get("naive")


# ---- statistics ------------------------------------------------------------

def median(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def pct(sorted_xs, q):
    """Linear interpolation between closest ranks (numpy's default)."""
    if not sorted_xs:
        return None
    k = (len(sorted_xs) - 1) * q
    f = int(k)
    c = min(f + 1, len(sorted_xs) - 1)
    return sorted_xs[f] + (sorted_xs[c] - sorted_xs[f]) * (k - f)


def fmt(x, nd=1):
    if x is None:
        return "-"
    if isinstance(x, int):
        return str(x)
    return "%.*f" % (nd, x)


def table(header, rows):
    out = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    for r in rows:
        out.append("| " + " | ".join(str(c) for c in r) + " |")
    return "\n".join(out)


def mktemp(prefix):
    return tempfile.mkdtemp(prefix=prefix)
