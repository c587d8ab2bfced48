"""benchlib.py - shared helpers of bench/compare and bench/routing.

Starts and stops llmux-sim nodes, llmux, nginx and HAProxy (each from its own
config file in a private temp dir, pinned with taskset, stopped by PID only),
runs llmux-bench and reads its JSON, and reads a process's CPU time and RSS
from /proc. Standard library only; runs under /usr/bin/python3.
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


# ---- HTTP helpers ----------------------------------------------------------

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


def sim_prefix_counters(port):
    """(hits, queries) from vLLM's counter names in /metrics."""
    text = http_get(port, "/metrics")[1]
    vals = {}
    for line in text.splitlines():
        for name in ("vllm:prefix_cache_hits_total", "vllm:prefix_cache_queries_total"):
            if line.startswith(name + "{") or line.startswith(name + " "):
                vals[name] = float(line.rsplit(" ", 1)[1])
    return vals.get("vllm:prefix_cache_hits_total", 0.0), vals.get("vllm:prefix_cache_queries_total", 0.0)


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
    """llmux --workers 1 with a JSON config of pools {model: (strategy, [sims])}."""

    def __init__(self, procs, bins, name, pools, flags=(), core=1, wrap=(), timeout=10.0):
        self.name = name
        conf = {"models": {m: {"servers": [{"url": s.url, "name": s.name} for s in sims],
                               "strategy": strat}
                           for m, (strat, sims) in pools.items()}}
        path = os.path.join(procs.tmp, name + ".json")
        with open(path, "w") as f:
            json.dump(conf, f, indent=1)
        argv = list(wrap) + [os.path.join(bins, "llmux"), "--config", path, "--listen", "127.0.0.1:0",
                             "--workers", "1", "--log-level", "warn"] + list(flags)
        self.p = procs.start(name, argv, core=core, env=llmux_env())
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
    """llmux-bench run ... --output JSON; returns the phase dict (concurrent or naive)."""
    out = os.path.join(tmp, label + ".json")
    argv = ["taskset", "-c", str(core), os.path.join(bins, "llmux-bench"), "run",
            "--base-url", url, "--no-progress", "--output", out] + list(args)
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
