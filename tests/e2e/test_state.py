"""
A node's state reads the same everywhere: GET /health (node and pool, and
its HTTP status), GET /stats (node, pool and overall status: what the status
page draws), the admin API,
and /metrics (llmux_node_healthy and the one-hot llmux_node_state, both per
pool and node) agree in every state, and routing agrees with them:

- healthy, and drained through the admin API; every node drained is a pool
  that is down: /health answers 503, as requests do (no_healthy_node);
- ejected after failed requests (llmux-sim --error-rate 1), then slow start
  once the cooldown is over and probes pass;
- unhealthy (a killed sim, active probes); all nodes dead is 503;
- an ejection whose cooldown ends while the node's probes still fail stays
  ejected (never "ok"), until a probe succeeds;
- unhealthy, then slow start, from a sim that answers 503 to everything for
  a while after it starts (llmux-sim --slow-start-ms).
"""
import json
import re
import time
from urllib.parse import quote

from conftest import T
from e2e_util import chat_body, wait_for

CHAT = "/v1/chat/completions"
BODY = json.dumps(chat_body(content="state", max_tokens=2)).encode()
TOKEN = "state-admin-token"
ADMIN = {"Authorization": "Bearer " + TOKEN}
ELIGIBLE = {"healthy", "slow_start"}
STATES = {"healthy", "slow_start", "ejected", "unhealthy", "drained"}
SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$')
LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)",?')


def metric_samples(lx, name):
    """[({label: value}, value)] of the samples of <name> in /metrics."""
    out = []
    for line in lx.client.get("/metrics").text.splitlines():
        m = SAMPLE.match(line)
        if m and m.group(1) == name:
            out.append((dict(LABEL.findall(m.group(2) or "")), float(m.group(3))))
    return out


def views(lx, pool="*"):
    """Every view of every node of <pool>: {node: {view: (state, healthy)}},
    and the pool's status and /health's HTTP status."""
    h = lx.client.get("/health")
    hj = h.json()
    st = lx.client.get("/stats").json()
    adm = lx.client.get("/admin/models", headers=ADMIN).json()
    healthy_m = {l["node"]: v for l, v in metric_samples(lx, "llmux_node_healthy")
                 if l["pool"] == pool}
    state_m = {}
    for l, v in metric_samples(lx, "llmux_node_state"):
        if l["pool"] == pool and v == 1:
            assert l["node"] not in state_m, "two states at 1 for %s" % l["node"]
            state_m[l["node"]] = l["state"]
    hp = [p for p in hj["pools"] if p["model"] == pool][0]
    sp = [m for m in st["models"] if m["model"] == pool][0]
    # /stats says what /health says of the pool and overall (with a 200).
    hp["stats_status"], hp["stats_healthy_nodes"] = sp["status"], sp["healthy_nodes"]
    hp["stats_overall"] = st["status"]
    out = {}
    for n in hp["nodes"]:
        out.setdefault(n["name"], {})["health"] = (n["state"], n["healthy"])
    for n in st["nodes"]:
        if n["model"] == pool:
            out[n["name"]]["stats"] = (n["state"], n["healthy"])
    for p in adm["models"]:
        if p["model"] == pool:
            for s in p["servers"]:
                out[s["name"]]["admin"] = (s["state"], s["healthy"])
    for name in out:
        out[name]["metrics"] = (state_m.get(name), healthy_m.get(name) == 1)
    return out, hp, h.status_code, hj["status"]


def agree(lx, want, pool="*"):
    """Checks that every view says <want> ({node: state}) for <pool>, that
    the pool's status follows its eligible nodes and that /health's status
    follows the pool's. Retries briefly: the views are read one after the
    other, and a state can change in between."""
    def check():
        got, hp, code, status = views(lx, pool)
        for name, state in want.items():
            for view, (s, healthy) in got[name].items():
                if s != state or healthy != (state in ELIGIBLE):
                    return None
        up = sum(1 for n in got.values() if n["health"][0] in ELIGIBLE)
        expect = "down" if up == 0 else "ok" if up == len(got) else "degraded"
        assert hp["status"] == expect and hp["healthy_nodes"] == up, hp
        if (hp["stats_status"], hp["stats_healthy_nodes"], hp["stats_overall"]) != \
                (expect, up, expect):
            return None
        assert (code == 503) == (expect == "down"), (code, hp)
        assert status == expect, status
        return got, expect
    try:
        return wait_for(check, T(2), interval=0.05, what="views agreeing on %r" % want)
    except AssertionError:
        raise AssertionError("views disagree with %r: %r" % (want, views(lx, pool)))


def chat(lx):
    with lx.new_client() as c:
        return c.post(CHAT, content=BODY, headers={"Content-Type": "application/json"})


def drain(lx, node, op="drain"):
    r = lx.client.post("/admin/nodes/%s/%s" % (quote(node, safe=""), op), headers=ADMIN)
    assert r.status_code == 200, r.text


def test_healthy_and_drained_agree_and_all_drained_is_503(procs):
    a, b = procs.sim(fast=True), procs.sim(fast=True)
    lx = procs.llmux([a, b], args=["--strategy", "round_robin", "--admin-token", TOKEN])
    agree(lx, {a.url: "healthy", b.url: "healthy"})
    drain(lx, a.url)
    _, status = agree(lx, {a.url: "drained", b.url: "healthy"})
    assert status == "degraded"
    for _ in range(4):
        r = chat(lx)
        assert r.status_code == 200 and r.headers["x-routed-node"] == b.url, r.text
    # Every node drained: requests get 503, and so does /health.
    drain(lx, b.url)
    _, status = agree(lx, {a.url: "drained", b.url: "drained"})
    assert status == "down"
    r = chat(lx)
    assert r.status_code == 503 and "no_healthy_node" in r.text, r.text
    drain(lx, a.url, "enable")
    agree(lx, {a.url: "healthy", b.url: "drained"})
    r = chat(lx)
    assert r.status_code == 200 and r.headers["x-routed-node"] == a.url, r.text
    drain(lx, b.url, "enable")
    _, status = agree(lx, {a.url: "healthy", b.url: "healthy"})
    assert status == "ok"


def test_ejected_then_slow_start_agree(procs):
    """A node answering 500 to every request (200 to /health) is ejected
    after HEALTH_FAILURE_THRESHOLD requests; with it the pool's only node,
    the pool is down. After the cooldown, probes passing, it is in slow
    start: eligible, the pool up again."""
    bad = procs.sim(fast=True, error_rate=1)
    lx = procs.llmux([bad], args=["--admin-token", TOKEN],
                     env={"HEALTH_CHECK_INTERVAL_SECONDS": "0.3", "HEALTH_FAILURE_THRESHOLD": "3",
                          "EJECT_COOLDOWN_SECONDS": "2", "SLOW_START_SECONDS": "60"})
    for _ in range(3):
        assert chat(lx).status_code == 500
    _, status = agree(lx, {bad.url: "ejected"})
    assert status == "down"
    r = chat(lx)
    assert r.status_code == 503 and "no_healthy_node" in r.text, r.text
    assert bad.stats()["requests_total"] == 3
    wait_for(lambda: views(lx)[0][bad.url]["health"][0] != "ejected", T(2) + 3, interval=0.05,
             what="the cooldown to end")
    _, status = agree(lx, {bad.url: "slow_start"})
    assert status == "ok"
    assert chat(lx).status_code == 500
    assert bad.stats()["requests_total"] == 4


def test_unhealthy_agrees_and_all_dead_is_503(procs):
    a, b = procs.sim(fast=True), procs.sim(fast=True)
    lx = procs.llmux([a, b], args=["--admin-token", TOKEN],
                     env={"HEALTH_CHECK_INTERVAL_SECONDS": "0.3", "HEALTH_FAILURE_THRESHOLD": "2"})
    a.kill()
    wait_for(lambda: views(lx)[0][a.url]["health"][0] == "unhealthy", T(5), interval=0.05,
             what="the killed node to go unhealthy")
    _, status = agree(lx, {a.url: "unhealthy", b.url: "healthy"})
    assert status == "degraded"
    b.kill()
    wait_for(lambda: views(lx)[0][b.url]["health"][0] == "unhealthy", T(5), interval=0.05,
             what="the second killed node to go unhealthy")
    _, status = agree(lx, {a.url: "unhealthy", b.url: "unhealthy"})
    assert status == "down"
    r = chat(lx)
    assert r.status_code == 503 and "no_healthy_node" in r.text, r.text


def test_ejection_outlasts_its_cooldown_while_probes_fail(procs):
    """A killed node is ejected by HEALTH_FAILURE_THRESHOLD (4) failed
    requests long before as many probes fail (one every 0.6 s). When its
    1.5 s cooldown is over, probes have failed since: it stays ejected (and
    /health 503), never "ok", until the fourth failed probe makes it
    unhealthy; a sim back on its port passes a probe: slow start."""
    sim = procs.sim(fast=True)
    port = sim.port
    lx = procs.llmux([sim], args=["--admin-token", TOKEN],
                     env={"HEALTH_CHECK_INTERVAL_SECONDS": "0.6", "HEALTH_FAILURE_THRESHOLD": "4",
                          "EJECT_COOLDOWN_SECONDS": "1.5", "SLOW_START_SECONDS": "60"})
    agree(lx, {sim.url: "healthy"})
    sim.kill()
    for _ in range(4):
        assert chat(lx).status_code in (502, 503)
    agree(lx, {sim.url: "ejected"})
    seen = set()
    deadline = time.monotonic() + 4.0
    while time.monotonic() < deadline and "unhealthy" not in seen:
        got, hp, code, status = views(lx)
        state = got[sim.url]["health"][0]
        seen.add(state)
        assert state in ("ejected", "unhealthy"), (got, hp)
        assert code == 503 and status == "down", (code, status, hp)
        time.sleep(0.05)
    assert seen == {"ejected", "unhealthy"}, seen
    agree(lx, {sim.url: "unhealthy"})
    back = procs.sim(fast=True, port=port)
    assert back.url == sim.url
    wait_for(lambda: views(lx)[0][sim.url]["health"][0] != "unhealthy", T(3), interval=0.05,
             what="a probe to pass")
    _, status = agree(lx, {sim.url: "slow_start"})
    assert status == "ok"
    assert chat(lx).status_code == 200


def test_unhealthy_then_slow_start_from_a_starting_sim(procs):
    """llmux-sim --slow-start-ms: its /health answers 503 for a while after
    it starts (a vLLM loading its weights): unhealthy, then slow start."""
    good = procs.sim(fast=True)
    starting = procs.sim(fast=True, slow_start_ms=3000)
    lx = procs.llmux([good, starting], args=["--admin-token", TOKEN],
                     env={"HEALTH_CHECK_INTERVAL_SECONDS": "0.2", "HEALTH_FAILURE_THRESHOLD": "2",
                          "SLOW_START_SECONDS": "60"})
    wait_for(lambda: views(lx)[0][starting.url]["health"][0] == "unhealthy", T(3), interval=0.05,
             what="the starting node to go unhealthy")
    _, status = agree(lx, {starting.url: "unhealthy", good.url: "healthy"})
    assert status == "degraded"
    wait_for(lambda: views(lx)[0][starting.url]["health"][0] != "unhealthy", T(3) + 3,
             interval=0.05, what="the node to come back")
    _, status = agree(lx, {starting.url: "slow_start", good.url: "healthy"})
    assert status == "ok"
