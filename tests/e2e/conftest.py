"""
End-to-end fixtures: real `llmux` and `llmux-sim` processes on 127.0.0.1.

Binaries come from $LLMUX_BIN_DIR (default: <repo>/bin). Every process binds
port 0 and prints a ready line naming its port; we read its stdout/stderr
(redirected to files, so a chatty process never blocks on a full pipe) until
that line appears, with a bound. Teardown sends SIGTERM, waits (bounded),
then SIGKILLs, reaps, and fails the test when the exit code is not the
expected one (0 after SIGTERM: this is how sanitizer reports surface), with
the process's stderr in the message.

Under ASan (a bin dir with "asan" in its path) every timeout is multiplied
by 3, since processes are ~3x slower; under TSan ("tsan" in the path) by 8
(~5-10x slower); LLMUX_E2E_SLOW=N sets the factor.
"""
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

sys.path.insert(0, os.path.dirname(__file__))

from e2e_nodes import PyNode  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "bench"))
from benchlib import httpx_nodelay  # noqa: E402


# httpx 0.23 sends a request's head and body in two send()s without
# TCP_NODELAY: Nagle would add ~40 ms to every request. One helper for the
# tests and the benchmarks.
httpx_nodelay()

REPO = Path(__file__).resolve().parents[2]
BIN_DIR = Path(os.environ.get("LLMUX_BIN_DIR") or REPO / "bin")
SLOW = float(os.environ.get("LLMUX_E2E_SLOW") or
             (3 if "asan" in str(BIN_DIR) else 8 if "tsan" in str(BIN_DIR) else 1))

LLMUX_READY = re.compile(rb"listening on http://(\S+):(\d+)")
SIM_READY = re.compile(rb"llmux-sim listening on (\S+):(\d+)")

# Variables a sanitizer build needs to behave as the caller asked.
PASS_ENV = ("ASAN_OPTIONS", "UBSAN_OPTIONS", "LSAN_OPTIONS", "TSAN_OPTIONS",
            "ASAN_SYMBOLIZER_PATH", "LLVM_SYMBOLIZER_PATH")


def T(seconds):
    """A timeout, scaled for slow (sanitizer) builds."""
    return seconds * SLOW


# Private copies of the binaries, made once per session: the tree is shared,
# and a rebuild of bin/ during the run must not make a test fail to exec.
_BIN_COPIES = {}


def _copy_binary(name, dest_dir):
    import shutil
    src = BIN_DIR / name
    deadline = time.monotonic() + 30
    while True:
        problem = None
        if not src.exists():
            problem = "not found (build it, or set LLMUX_BIN_DIR)"
        else:
            dst = Path(dest_dir) / name
            try:
                shutil.copy2(src, dst)
                r = subprocess.run([str(dst), "--help"], stdin=subprocess.DEVNULL,
                                   capture_output=True, timeout=T(20), env=clean_env())
                if r.returncode == 0:
                    return str(dst)
                problem = "--help exited %d: %s" % (r.returncode, r.stderr[-2000:])
            except (OSError, subprocess.SubprocessError) as e:
                problem = repr(e)
        if time.monotonic() >= deadline:
            pytest.fail("binary %s: %s" % (src, problem), pytrace=False)
        time.sleep(0.5)  # maybe being rebuilt right now


def bin_path(name):
    if name not in _BIN_COPIES:
        pytest.fail("no copy of %s (the session fixture did not run)" % name)
    return _BIN_COPIES[name]


@pytest.fixture(scope="session", autouse=True)
def _binaries(tmp_path_factory):
    d = tmp_path_factory.mktemp("bin")
    for name in ("llmux", "llmux-sim"):
        _BIN_COPIES[name] = _copy_binary(name, d)
    yield


def clean_env(extra=None):
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    for k in PASS_ENV:
        if k in os.environ:
            env[k] = os.environ[k]
    if extra:
        env.update({k: str(v) for k, v in extra.items()})
    return env


def tail(path, limit=6000):
    try:
        data = Path(path).read_bytes()
    except OSError:
        return "<no output>"
    text = data.decode("utf-8", "replace")
    return text if len(text) <= limit else "...\n" + text[-limit:]


class Proc:
    """A child process whose stdout/stderr go to files in <logdir>."""

    def __init__(self, name, argv, env, cwd, logdir, preexec_fn=None):
        self.name = name
        self.argv = argv
        self.out_path = Path(logdir) / ("%s.stdout" % name)
        self.err_path = Path(logdir) / ("%s.stderr" % name)
        with open(self.out_path, "wb") as out, open(self.err_path, "wb") as err:
            self.p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                                      env=env, cwd=str(cwd), preexec_fn=preexec_fn)
        self.pid = self.p.pid
        self.expect_rc = 0
        self.stopped = False
        self.rc = None

    @property
    def stdout(self):
        return tail(self.out_path)

    @property
    def stderr(self):
        return tail(self.err_path)

    def output_bytes(self):
        out = b""
        for p in (self.out_path, self.err_path):
            try:
                out += p.read_bytes()
            except OSError:
                pass
        return out

    def describe(self):
        return "%s (pid %d): %s\n--- stdout ---\n%s\n--- stderr ---\n%s" % (
            self.name, self.pid, " ".join(self.argv), self.stdout, self.stderr)

    def wait_for_output(self, regex, timeout):
        deadline = time.monotonic() + timeout
        while True:
            m = regex.search(self.output_bytes())
            if m:
                return m
            if self.p.poll() is not None:
                # One more look: the line may have been written just before exit.
                m = regex.search(self.output_bytes())
                if m:
                    return m
                raise AssertionError("%s exited with %s before printing %r\n%s" % (
                    self.name, self.p.returncode, regex.pattern, self.describe()))
            if time.monotonic() >= deadline:
                raise AssertionError("%s did not print %r within %.0f s\n%s" % (
                    self.name, regex.pattern, timeout, self.describe()))
            time.sleep(0.01)

    def alive(self):
        return self.p.poll() is None

    def signal(self, sig):
        if self.p.poll() is None:
            os.kill(self.pid, sig)

    def wait(self, timeout):
        """Waits for the exit (bounded); returns the exit code or None."""
        try:
            self.rc = self.p.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None
        return self.rc

    def stop(self, timeout=None, check=True):
        """SIGTERM, bounded wait, SIGKILL; reaps. Returns the exit code.
        With <check>, asserts the code is the expected one."""
        if self.stopped:
            return self.rc
        self.stopped = True
        timeout = T(15) if timeout is None else timeout
        killed = False
        if self.p.poll() is None:
            os.kill(self.pid, signal.SIGTERM)
            try:
                self.p.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                killed = True
                self.p.kill()
                self.p.wait(timeout=T(10))
        self.rc = self.p.returncode
        if check:
            assert not killed, "%s did not exit within %.0f s of SIGTERM; killed\n%s" % (
                self.name, timeout, self.describe())
            assert self.rc == self.expect_rc, "%s exited with %s, expected %s\n%s" % (
                self.name, self.rc, self.expect_rc, self.describe())
        return self.rc

    def kill(self):
        """SIGKILL and reap, no checks (for processes a test means to crash)."""
        self.stopped = True
        if self.p.poll() is None:
            self.p.kill()
        self.p.wait(timeout=T(10))
        self.rc = self.p.returncode


class Sim(Proc):
    def __init__(self, argv, env, cwd, logdir, index):
        super().__init__("llmux-sim-%d" % index, argv, env, cwd, logdir)
        m = self.wait_for_output(SIM_READY, T(15))
        self.host = m.group(1).decode()
        self.port = int(m.group(2))
        self.url = "http://127.0.0.1:%d" % self.port
        self.client = httpx.Client(base_url=self.url, timeout=T(30), trust_env=False)

    def stats(self):
        r = self.client.get("/sim/stats")
        assert r.status_code == 200, r.text
        return r.json()

    def close_client(self):
        self.client.close()


class Llmux(Proc):
    def __init__(self, argv, env, cwd, logdir, index, ready=True, preexec_fn=None):
        super().__init__("llmux-%d" % index, argv, env, cwd, logdir, preexec_fn=preexec_fn)
        self.cwd = cwd
        self.port = None
        self.url = None
        self.client = None
        if ready:
            m = self.wait_for_output(LLMUX_READY, T(15))
            self.port = int(m.group(2))
            self.url = "http://127.0.0.1:%d" % self.port
            self.client = httpx.Client(base_url=self.url, timeout=T(30), trust_env=False)

    def health(self):
        r = self.client.get("/health")
        return r.json()

    def node_stats(self):
        """{node name: node object} from GET /health."""
        return {n["name"]: n for n in self.health()["nodes"]}

    def new_client(self, **kw):
        kw.setdefault("timeout", T(30))
        return httpx.Client(base_url=self.url, trust_env=False, **kw)

    def close_client(self):
        if self.client:
            self.client.close()


class ProcManager:
    """Starts processes for one test and stops them all at teardown."""

    def __init__(self, tmp_path):
        self.tmp = tmp_path
        self.procs = []
        self.nodes = []
        self.n_sims = 0
        self.n_llmux = 0

    def sim(self, *args, model="sim-model", fast=False, **opts):
        """Starts llmux-sim. Keyword options become flags: decode_ms=20 ->
        --decode-ms 20; True -> the bare flag."""
        argv = [bin_path("llmux-sim"), "--host", "127.0.0.1", "--port", "0"]
        if model:
            argv += ["--model", model]
        if fast:
            argv.append("--fast")
        for k, v in opts.items():
            flag = "--" + k.replace("_", "-")
            if v is True:
                argv.append(flag)
            elif v is not False and v is not None:
                argv += [flag, str(v)]
        argv += list(args)
        cwd = self.tmp / ("sim%d" % self.n_sims)
        cwd.mkdir()
        s = Sim(argv, clean_env(), cwd, self.tmp, self.n_sims)
        self.n_sims += 1
        self.procs.append(s)
        return s

    def llmux(self, nodes=(), args=(), env=None, workers=2, listen="127.0.0.1:0", ready=True,
              dotenv=None, cwd=None, preexec_fn=None):
        """Starts llmux in front of <nodes> (objects with .url, or URL strings).
        <preexec_fn> runs in the child before exec (e.g. to lower a limit)."""
        argv = [bin_path("llmux")]
        if listen:
            argv += ["--listen", listen]
        urls = [n if isinstance(n, str) else n.url for n in nodes]
        if urls:
            argv += ["--nodes", ",".join(urls)]
        if workers:
            argv += ["--workers", str(workers)]
        argv += [str(a) for a in args]
        if cwd is None:
            cwd = self.tmp / ("llmux%d" % self.n_llmux)
            cwd.mkdir()
        if dotenv is not None:
            (Path(cwd) / ".env").write_text(dotenv)
        lx = Llmux(argv, clean_env(env), cwd, self.tmp, self.n_llmux, ready=ready,
                   preexec_fn=preexec_fn)
        self.n_llmux += 1
        self.procs.append(lx)
        return lx

    def pynode(self, handler=None, on_connect=None):
        n = PyNode(handler=handler, on_connect=on_connect)
        self.nodes.append(n)
        return n

    def teardown(self):
        failures = []
        # Gateways first (they hold connections to the nodes), then nodes.
        order = [p for p in self.procs if isinstance(p, Llmux)] + \
                [p for p in self.procs if not isinstance(p, Llmux)]
        for p in order:
            try:
                if isinstance(p, (Sim, Llmux)):
                    p.close_client()
                p.stop()
            except AssertionError as e:
                failures.append(str(e))
            except Exception as e:  # never leave a process behind
                failures.append("%s: %r" % (p.name, e))
                try:
                    p.kill()
                except Exception:
                    pass
        for n in self.nodes:
            n.close()
        if failures:
            pytest.fail("process teardown:\n" + "\n\n".join(failures), pytrace=False)


@pytest.fixture
def procs(tmp_path):
    pm = ProcManager(tmp_path)
    try:
        yield pm
    finally:
        pm.teardown()


@pytest.fixture
def closed_port():
    """A TCP port on 127.0.0.1 with nothing listening (connect is refused)."""
    import socket
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port
