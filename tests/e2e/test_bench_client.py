"""End-to-end checks of llmux-bench against real llmux-sim (and llmux) processes.

Run: /usr/bin/python3 -m pytest -q tests/e2e/test_bench_client.py
Binaries come from $LLMUX_BIN_DIR, else bin/ at the repository root (`make`).
Every process binds port 0 and says when it is ready; every wait is bounded;
teardown stops what it started, by PID. The whole file takes about 3 s.
"""

import csv
import json
import os
import re
import select
import signal
import socket
import subprocess
import time
import xml.etree.ElementTree as ET

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = os.environ.get("LLMUX_BIN_DIR") or os.path.join(ROOT, "bin")
BENCH = os.path.join(BIN, "llmux-bench")
SIM = os.path.join(BIN, "llmux-sim")
LLMUX = os.path.join(BIN, "llmux")

if not os.path.exists(BENCH) or not os.path.exists(SIM):
    pytest.skip("build first: make (needs bin/llmux-bench and bin/llmux-sim)", allow_module_level=True)


def _read_line(proc, pattern, stream, timeout=5.0):
    """Reads <stream> of <proc> until a line matches <pattern>; returns the match."""
    deadline = time.monotonic() + timeout
    buf = b""
    fd = stream.fileno()
    while time.monotonic() < deadline:
        r, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
        if not r:
            break
        chunk = os.read(fd, 4096)
        if not chunk:
            break
        buf += chunk
        m = re.search(pattern, buf.decode(errors="replace"))
        if m:
            return m
    raise RuntimeError(f"no line matching {pattern!r} within {timeout}s; got {buf[-500:]!r}")


class Procs:
    """Processes started by one test, stopped by PID at teardown."""

    def __init__(self):
        self.procs = []

    def sim(self, *args):
        p = subprocess.Popen([SIM, "--port", "0", "--log-level", "warn", *args],
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        self.procs.append(p)
        m = _read_line(p, r"listening on [\d.]+:(\d+)", p.stdout)
        return f"http://127.0.0.1:{m.group(1)}"

    def llmux(self, nodes):
        p = subprocess.Popen([LLMUX, "--listen", "127.0.0.1:0", "--workers", "1",
                              "--nodes", ",".join(nodes)],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self.procs.append(p)
        m = _read_line(p, r"listening on http://[\d.]+:(\d+)", p.stderr)
        return f"http://127.0.0.1:{m.group(1)}"

    def stop(self):
        for p in self.procs:
            if p.poll() is None:
                os.kill(p.pid, signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                os.kill(p.pid, signal.SIGKILL)
                p.wait(timeout=5)
            for s in (p.stdout, p.stderr):
                if s:
                    s.close()


@pytest.fixture
def procs():
    ps = Procs()
    yield ps
    ps.stop()


def bench(*args, timeout=30, check=True):
    r = subprocess.run([BENCH, *map(str, args)], capture_output=True, text=True, timeout=timeout)
    if check and r.returncode != 0:
        raise AssertionError(f"llmux-bench {' '.join(map(str, args))} -> {r.returncode}\n"
                             f"stdout:\n{r.stdout}\nstderr:\n{r.stderr}")
    return r


SUMMARY_KEYS = ["min", "mean", "p50", "p90", "p95", "p99", "max"]


def check_phase(run, stream=False):
    """The invariants of one phase object in the JSON."""
    for k in ["label", "loop", "concurrency", "num_requests", "successes", "errors", "error_rate",
              "total_time_seconds", "requests_per_second", "tokens_per_second", "prompt_tokens",
              "completion_tokens", "errors_by_status", "errors_by_kind", "node_counts",
              "node_error_counts", "time_to_first_token_p50_ms", "connections_opened",
              "client_cpu_user_s", "client_cpu_sys_s", "client_cpu_s_per_100k_requests"]:
        assert k in run, k
    for s in SUMMARY_KEYS:
        for prefix in ["latency", "ttft", "itl"]:
            assert f"{prefix}_{s}_ms" in run
    assert run["num_requests"] == run["successes"] + run["errors"]
    assert sum(run["node_counts"].values()) == run["successes"]
    assert sum(run["errors_by_kind"].values()) == run["errors"]
    assert sum(run["errors_by_status"].values()) == run["errors_by_kind"]["http"]
    if run["successes"]:
        lat = [run[f"latency_{s}_ms"] for s in ["min", "p50", "p90", "p95", "p99", "max"]]
        assert lat == sorted(lat) and lat[0] > 0
        assert run["requests_per_second"] > 0
    if stream and run["successes"]:
        ttft = [run[f"ttft_{s}_ms"] for s in ["min", "p50", "p95", "p99", "max"]]
        assert all(v is not None for v in ttft) and ttft == sorted(ttft)
        assert run["ttft_p50_ms"] <= run["latency_p50_ms"]
        assert run["itl_p50_ms"] is not None and run["itl_max_ms"] >= run["itl_p50_ms"] >= 0
    if not stream:
        assert run["ttft_p50_ms"] is None and run["itl_p50_ms"] is None


def test_help_and_bad_flags():
    r = bench("--help")
    assert "run" in r.stdout and "sweep" in r.stdout
    r = bench("run", "--help")
    for flag in ["--mode", "--num-requests", "--concurrency", "--prompt-tokens", "--max-tokens",
                 "--base-url", "--auth-token", "--model", "--output", "--log-node", "--stream",
                 "--duration", "--rate", "--endpoint", "--timeout"]:
        assert flag in r.stdout, flag
    assert "--concurrencies" in bench("sweep", "--help").stdout
    for args in [["run", "--bogus"], ["run", "--concurrency", "x"], ["run", "--mode", "fast"],
                 ["run", "--concurrency"], ["frob"], ["run", "--plot", "x.svg"],
                 ["sweep", "--mode", "both"], ["run", "--num-requests", "5", "--duration", "1"],
                 ["run", "--base-url", "https://example.com"], ["run", "--endpoint", "x"],
                 ["sweep", "--concurrencies", "1,0"]]:
        r = bench(*args, check=False)
        assert r.returncode == 2, (args, r.stderr)
        assert r.stderr.startswith("llmux-bench: "), (args, r.stderr)


def test_run_json_fields_and_seed_flags(procs, tmp_path):
    url = procs.sim("--fast")
    out = tmp_path / "run.json"
    # The first seed's command, as its README gives it (without a command word
    # too, as its run_benchmark.py took the flags), with a /v1 base URL.
    bench("--mode", "both", "--num-requests", 30, "--concurrency", 6, "--prompt-tokens", 40,
          "--max-tokens", 8, "--base-url", url + "/v1/", "--auth-token", "s3cr3t-T0ken",
          "--model", "m", "--output", out, "--log-node")
    d = json.loads(out.read_text())
    assert d["config"]["num_requests"] == 30 and d["config"]["concurrency"] == 6
    assert d["config"]["url"] == url + "/v1/chat/completions"
    assert d["config"]["auth"] is True and "s3cr3t" not in out.read_text()
    for name in ["naive", "concurrent"]:
        run = d["runs"][name]
        check_phase(run)
        assert run["successes"] == 30 and run["errors"] == 0
        # usage from the sim: 8 completion tokens each, prompt 40 + 4 template
        # tokens + 4 of the generation prompt.
        assert run["completion_tokens"] == 30 * 8
        assert run["prompt_tokens"] == 30 * 48
        assert d["runs"][f"{name}_node_counts"] == run["node_counts"] == {"unknown": 30}
    assert d["runs"]["naive"]["concurrency"] == 1
    assert d["throughput_multiplier"] is not None


def test_stream_ttft_itl(procs, tmp_path):
    url = procs.sim("--decode-ms", "2", "--decode-ms-per-seq", "0")
    out = tmp_path / "s.json"
    r = bench("run", "--mode", "concurrent", "--stream", "--num-requests", 12, "--concurrency", 4,
              "--max-tokens", 10, "--base-url", url, "--output", out, "--no-progress")
    assert "ttft p50 (ms)" in r.stdout and "itl p50 (ms)" in r.stdout
    run = json.loads(out.read_text())["runs"]["concurrent"]
    check_phase(run, stream=True)
    assert run["successes"] == 12
    assert run["completion_tokens"] == 120 and run["stream_events"] == 120
    # Decode steps every 2 ms: the mean gap between tokens is about that (the
    # median can be 0 on a loaded machine, when events arrive in one read).
    assert 0.5 <= run["itl_mean_ms"] <= 50
    assert run["ttft_p50_ms"] > 0 and run["usage_missing"] == 0


def test_completions_endpoint_stream(procs, tmp_path):
    url = procs.sim("--fast")
    out = tmp_path / "c.json"
    bench("run", "--mode", "naive", "--endpoint", "completions", "--stream", "--num-requests", 5,
          "--max-tokens", 6, "--base-url", url, "--output", out)
    d = json.loads(out.read_text())
    assert d["config"]["url"].endswith("/v1/completions")
    run = d["runs"]["naive"]
    check_phase(run, stream=True)
    assert run["successes"] == 5 and run["stream_events"] == 30


def test_both_multiplier_above_one(procs, tmp_path):
    url = procs.sim("--decode-ms", "5")
    out = tmp_path / "b.json"
    r = bench("run", "--mode", "both", "--num-requests", 16, "--concurrency", 8, "--max-tokens", 10,
              "--base-url", url, "--output", out)
    d = json.loads(out.read_text())
    check_phase(d["runs"]["naive"])
    check_phase(d["runs"]["concurrent"])
    # Continuous batching: 8 at once is far faster than one after another.
    assert d["throughput_multiplier"] > 2, d["throughput_multiplier"]
    assert d["multiplier_basis"] == "tokens_per_second"
    assert re.search(r"Multiplier:\s+[\d.]+x", r.stdout)


def test_closed_port_counts_connect_errors(tmp_path):
    # A bound socket that does not listen: connects are refused, and stay so.
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    try:
        out = tmp_path / "e.json"
        r = bench("run", "--mode", "both", "--num-requests", 7, "--concurrency", 3,
                  "--base-url", f"http://127.0.0.1:{s.getsockname()[1]}", "--output", out,
                  check=False)
        assert r.returncode == 1 and "no request succeeded" in r.stderr
        d = json.loads(out.read_text())
        for name in ["naive", "concurrent"]:
            run = d["runs"][name]
            check_phase(run)
            assert run["errors"] == 7 and run["successes"] == 0
            assert run["errors_by_kind"]["connect"] == 7 and run["error_rate"] == 100
        assert d["throughput_multiplier"] is None
    finally:
        s.close()


def test_http_errors_and_timeouts(procs, tmp_path):
    url = procs.sim("--fast")
    out = tmp_path / "h.json"
    bench("run", "--mode", "concurrent", "--num-requests", 6, "--concurrency", 2, "--base-url", url,
          "--header", "x-sim: status=503", "--output", out, check=False)
    run = json.loads(out.read_text())["runs"]["concurrent"]
    check_phase(run)
    assert run["errors_by_status"] == {"503": 6}
    assert "ServiceUnavailableError" in run["error_samples"]["503"]
    t0 = time.monotonic()
    bench("run", "--mode", "concurrent", "--num-requests", 4, "--concurrency", 4, "--base-url", url,
          "--header", "x-sim: hang=1", "--timeout", "0.3", "--output", out, check=False)
    assert time.monotonic() - t0 < 5
    run = json.loads(out.read_text())["runs"]["concurrent"]
    check_phase(run)
    assert run["errors_by_kind"]["timeout"] == 4
    bench("run", "--mode", "concurrent", "--stream", "--num-requests", 4, "--concurrency", 2,
          "--base-url", url, "--header", "x-sim: drop_after=2", "--output", out, check=False)
    run = json.loads(out.read_text())["runs"]["concurrent"]
    check_phase(run, stream=True)
    assert run["errors_by_kind"]["closed"] == 4


def test_open_loop_rate_and_duration(procs, tmp_path):
    url = procs.sim("--fast")
    out = tmp_path / "r.json"
    bench("run", "--mode", "concurrent", "--rate", 200, "--duration", 0.5, "--concurrency", 16,
          "--max-tokens", 4, "--base-url", url, "--output", out)
    d = json.loads(out.read_text())
    run = d["runs"]["concurrent"]
    check_phase(run)
    assert d["config"]["rate"] == 200 and d["config"]["duration_seconds"] == 0.5
    assert run["loop"] == "open" and run["rate"] == 200
    # 0.5 s at 200/s: 100 starts on schedule.
    assert run["num_requests"] == 100 and run["successes"] == 100


def test_node_distribution_through_llmux(procs, tmp_path):
    if not os.path.exists(LLMUX):
        pytest.skip("no bin/llmux")
    nodes = [procs.sim("--fast"), procs.sim("--fast")]
    url = procs.llmux(nodes)
    out = tmp_path / "n.json"
    r = bench("run", "--mode", "concurrent", "--num-requests", 40, "--concurrency", 4,
              "--max-tokens", 4, "--base-url", url, "--output", out, "--log-node")
    run = json.loads(out.read_text())["runs"]["concurrent"]
    check_phase(run)
    assert set(run["node_counts"]) <= set(nodes) and len(run["node_counts"]) == 2
    assert sum(run["node_counts"].values()) == 40
    assert "Concurrent node counts" in r.stdout and nodes[0] in r.stdout


def test_sweep_outputs(procs, tmp_path):
    url = procs.sim("--decode-ms", "1")
    j, c, svg = tmp_path / "s.json", tmp_path / "s.csv", tmp_path / "s.svg"
    levels = [1, 2, 4]
    r = bench("sweep", "--concurrencies", ",".join(map(str, levels)), "--num-requests", 8,
              "--max-tokens", 4, "--base-url", url, "--output-json", j, "--output-csv", c,
              "--plot", svg)
    assert len(re.findall(r"^c=\d+\s+tok/s=", r.stdout, re.M)) == len(levels)
    rows = json.loads(j.read_text())
    assert [row["concurrency"] for row in rows] == levels
    for row in rows:
        check_phase(row)
        assert row["successes"] == 8 and row["config"]["num_requests"] == 8
    with open(c, newline="") as f:
        table = list(csv.DictReader(f))
    assert [int(t["concurrency"]) for t in table] == levels
    # The seed's columns come first.
    assert list(table[0])[:4] == ["concurrency", "tokens_per_second", "latency_p95_ms",
                                  "error_rate"]
    root = ET.parse(svg).getroot()
    assert root.tag == "{http://www.w3.org/2000/svg}svg"
    text = " ".join(t.text or "" for t in root.iter("{http://www.w3.org/2000/svg}text"))
    assert "p95 latency (ms)" in text and "throughput" in text and "concurrency" in text
    # Without --stream: no TTFT line; the error rate is a line even at 0 %.
    assert svg_series(root) == {"throughput": 3, "latency": 3, "errors": 3}


SVG_NS = "{http://www.w3.org/2000/svg}"


def svg_series(root):
    """{series id: number of points} of the chart's lines."""
    return {p.get("class")[len("series-"):]: len(p.get("points").split())
            for p in root.iter(SVG_NS + "polyline")}


def text_boxes(root):
    """(x0, y0, x1, y1, text) of every unrotated label, a little wider than
    Helvetica draws it."""
    out = []
    for t in root.iter(SVG_NS + "text"):
        if t.get("transform") or not t.text:
            continue
        size = float(t.get("font-size") or root.get("font-size") or 12)
        w = len(t.text) * size * 0.55
        x, y = float(t.get("x")), float(t.get("y"))
        x0 = {"middle": x - w / 2, "end": x - w}.get(t.get("text-anchor"), x)
        out.append((x0, y - size * 0.75, x0 + w, y + size * 0.2, t.text))
    return out


def test_sweep_chart_errors_ttft_and_labels_apart(procs, tmp_path):
    """--stream against a node that fails 1 request in 5: the chart has a TTFT
    line and an error-rate line (points above its floor), and with 14 levels
    packed on a log axis no two labels overlap, and none leaves the image."""
    url = procs.sim("--decode-ms", "1", "--error-rate", "0.2", "--seed", "7")
    svg = tmp_path / "s.svg"
    levels = [1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128]
    r = bench("sweep", "--concurrencies", ",".join(map(str, levels)), "--num-requests", 30,
              "--max-tokens", 4, "--stream", "--base-url", url, "--plot", svg, check=False)
    assert r.returncode in (0, 1), r.stderr
    root = ET.parse(svg).getroot()
    series = svg_series(root)
    assert series == {k: len(levels) for k in ("throughput", "latency", "ttft", "errors")}
    width, height = float(root.get("width")), float(root.get("height"))
    assert root.get("viewBox") == "0 0 %g %g" % (width, height)
    err = next(p for p in root.iter(SVG_NS + "polyline") if p.get("class") == "series-errors")
    ys = [float(xy.split(",")[1]) for xy in err.get("points").split()]
    assert len(set(ys)) > 1 and min(ys) < max(ys) - 5, ys
    text = " ".join(t.text or "" for t in root.iter(SVG_NS + "text"))
    assert "p95 TTFT" in text and "errors %" in text
    # Values are in the table under the axis, some levels thinned, the last shown.
    tp = [t.text for t in root.iter(SVG_NS + "text") if t.get("class") == "value-throughput"]
    assert 3 <= len(tp) < len(levels), tp
    ticks = [t.text for t in root.iter(SVG_NS + "text")
             if t.get("text-anchor") == "middle" and t.text in map(str, levels)]
    assert ticks[0] == "1" and ticks[-1] == "128", ticks
    boxes = text_boxes(root)
    for i, a in enumerate(boxes):
        assert a[0] >= 0 and a[2] <= width and a[1] >= 0 and a[3] <= height, a
        for b in boxes[i + 1:]:
            overlap = a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]
            assert not overlap, (a, b)
