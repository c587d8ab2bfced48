"""
Mistakes an operator makes, and the message each one gets (issue 13):
a second llmux on a port that is taken, a node URL written as vLLM's base
URL (with /v1), a misspelt variable, a node that refuses connections.
"""
import re
import socket
import time

import httpx

from conftest import T
from e2e_nodes import http_response
from e2e_util import wait_for

CHAT = {"model": "sim-model", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}


def exit_output(lx, timeout=None):
    """Waits for <lx> to exit on its own; returns (exit code, its output)."""
    rc = lx.wait(T(15) if timeout is None else timeout)
    assert rc is not None, "llmux did not exit\n" + lx.describe()
    lx.stopped = True
    return rc, lx.output_bytes().decode("utf-8", "replace")


def test_second_instance_on_the_same_port_is_refused(procs):
    sim = procs.sim(fast=True)
    first = procs.llmux([sim])
    second = procs.llmux([sim], listen="127.0.0.1:%d" % first.port, ready=False)
    rc, out = exit_output(second)
    assert rc == 1, out
    assert out.strip() == ("llmux: cannot listen on 127.0.0.1:%d: another process already "
                           "listens on it (another llmux?); stop it or choose another port"
                           % first.port), out
    # The first one still has the port to itself.
    for _ in range(6):
        assert first.client.post("/v1/chat/completions", json=CHAT).status_code == 200


def test_foreign_reuseport_listener_is_refused(procs):
    # A process that set SO_REUSEPORT itself (as llmux's workers do) would
    # otherwise share the port with llmux, the kernel splitting the traffic.
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        s.bind(("127.0.0.1", 0))
        s.listen(8)
        port = s.getsockname()[1]
        lx = procs.llmux(["http://127.0.0.1:9"], listen="127.0.0.1:%d" % port, ready=False)
        rc, out = exit_output(lx)
        assert rc == 1, out
        assert "cannot listen on 127.0.0.1:%d: another process already listens on it" % port \
            in out, out
    finally:
        s.close()


def test_port_free_again_after_a_stop(procs):
    # A stopped llmux leaves connections in TIME_WAIT: the port is free.
    sim = procs.sim(fast=True)
    first = procs.llmux([sim])
    port = first.port
    assert first.client.post("/v1/chat/completions", json=CHAT).status_code == 200
    first.close_client()
    first.stop()
    again = procs.llmux([sim], listen="127.0.0.1:%d" % port)
    assert again.port == port
    assert again.client.post("/v1/chat/completions", json=CHAT).status_code == 200


def test_misspelt_variable_warns_with_the_likely_name(procs):
    sim = procs.sim(fast=True)
    lx = procs.llmux([sim], env={"ROUTING_STRATEGEY": "least_loaded", "LLMUX_WORKERS": "3",
                                 "LLMUX_SOMETHING": "1", "UNRELATED_SETTING": "x"},
                     dotenv="# other programs' keys are fine\nDATABASE_URL=x\n"
                            "MAX_RETRYS=5\n")
    out = lx.output_bytes().decode()
    assert "warn environment variable ROUTING_STRATEGEY is not an llmux setting and is " \
           "ignored (did you mean ROUTING_STRATEGY?)" in out, out
    assert "warn environment variable LLMUX_WORKERS is not an llmux setting and is ignored " \
           "(did you mean WORKERS?)" in out, out
    assert "warn environment variable LLMUX_SOMETHING is not an llmux setting and is ignored " \
           "(llmux --help lists them)" in out, out
    assert ".env:3: MAX_RETRYS is not an llmux setting and is ignored (did you mean " \
           "MAX_RETRIES?)" in out, out
    assert "UNRELATED_SETTING" not in out and "DATABASE_URL" not in out, out
    # The ready line shows what is in force: the misspelt strategy was not.
    assert re.search(r"listening on http://127\.0\.0\.1:%d \(2 workers\): pool \* \(any model, "
                     r"round_robin, 1 node\)\n" % lx.port, out), out


def test_ready_line_lists_the_pools(procs, tmp_path):
    a, b = procs.sim(fast=True), procs.sim(fast=True, model="embed-m")
    cfg = tmp_path / "pools.json"
    cfg.write_text('{"models": {"chat-m": {"servers": ["%s", "%s/v1"]}, "embed-m": '
                   '{"servers": ["%s"], "strategy": "least_connection"}}}'
                   % (a.url, b.url, b.url))
    lx = procs.llmux(args=["--config", cfg], workers=1)
    out = lx.output_bytes().decode()
    assert ("listening on http://127.0.0.1:%d (1 worker): pools chat-m (round_robin, 2 nodes), "
            "embed-m (least_loaded, 1 node)\n" % lx.port) in out, out


def node_paths(node):
    return [(r.method, r.target) for r in node.requests]


def test_vllm_base_url_with_v1(procs):
    # How vLLM's docs write a base URL: llmux sends /v1/... once, and probes
    # and scrapes the node's root paths.
    sim = procs.sim(fast=True)
    lx = procs.llmux([sim.url + "/v1"], args=["--health-check-interval", "0.2",
                                              "--health-failure-threshold", "1"])
    for _ in range(3):
        r = lx.client.post("/v1/chat/completions", json=CHAT)
        assert r.status_code == 200, r.text
        assert r.headers["x-routed-node"] == sim.url + "/v1"
    assert sim.stats()["endpoint_requests"]["/v1/chat/completions"] == 3
    # Several probes later (the sim answers 404 to /v1/health): still healthy.
    time.sleep(1.0)
    node = lx.node_stats()[sim.url + "/v1"]
    assert node["healthy"] is True and node["last_error"] is None, node


def test_vllm_base_url_paths(procs):
    node = procs.pynode()
    lx = procs.llmux([node.url + "/v1/"], args=["--health-check-interval", "0.2",
                                                "--metrics-update-interval", "0.2"])
    assert lx.client.post("/v1/chat/completions", json=CHAT).status_code == 200
    assert lx.client.post("/tokenize", json={"model": "m", "prompt": "x"}).status_code == 200
    wait_for(lambda: {("GET", "/health"), ("GET", "/metrics")} <= set(node_paths(node)), T(10),
             what="a probe and a scrape")
    paths = set(node_paths(node))
    assert ("POST", "/v1/chat/completions") in paths and ("POST", "/tokenize") in paths, paths
    assert not [p for m, p in paths if p.startswith("/v1/v1") or p in ("/v1/health",
                                                                        "/v1/metrics")], paths


def test_a_base_path_stays_a_prefix(procs):
    node = procs.pynode()
    lx = procs.llmux([node.url + "/vllm-a"], args=["--health-check-interval", "0.2"])
    assert lx.client.post("/v1/chat/completions", json=CHAT).status_code == 200
    wait_for(lambda: ("GET", "/vllm-a/health") in node_paths(node), T(10), what="a probe")
    assert ("POST", "/vllm-a/v1/chat/completions") in node_paths(node)


def test_health_check_names_url_and_status(procs):
    def handler(conn, req):
        if req.target == "/health":
            conn.send(http_response(404, b'{"detail":"Not Found"}'))
        else:
            conn.send(http_response(200, b"{}"))
        return True

    node = procs.pynode(handler)
    lx = procs.llmux([node], args=["--health-check-interval", "0.2",
                                   "--health-failure-threshold", "1"])
    why = "health check of %s/health answered 404" % node.url
    wait_for(lambda: lx.node_stats()[node.url]["last_error"] == why, T(10),
             what="the 404 in /health")
    assert lx.node_stats()[node.url]["healthy"] is False
    assert ("warn node %s marked unhealthy: %s" % (node.url, why)) in lx.output_bytes().decode()


def test_refused_node_says_refused(procs, closed_port):
    url = "http://127.0.0.1:%d" % closed_port
    # A request first, while the node still counts as healthy (3 failed
    # probes, 15 s apart, mark it down): the proxied attempt is refused.
    lx = procs.llmux([url], args=["--max-retries", "0"])
    r = lx.client.post("/v1/chat/completions", json=CHAT)
    assert r.status_code == 502, r.text
    out = lx.output_bytes().decode()
    assert re.search(r"warn \[[^\]]+\] node %s: connection refused\n" % re.escape(url), out), out
    assert lx.node_stats()[url]["last_error"] == "connection refused"
    lx.stop()

    lx = procs.llmux([url], args=["--health-check-interval", "0.2",
                                  "--health-failure-threshold", "1"])
    why = "health check of %s/health failed: connection refused" % url
    wait_for(lambda: lx.node_stats()[url]["last_error"] == why, T(10),
             what="refused in /health")
    assert ("warn node %s marked unhealthy: %s" % (url, why)) in lx.output_bytes().decode()
