"""
Admission: MAX_CONCURRENT_REQUESTS slots, the FIFO queue of MAX_QUEUE_SIZE
(429 beyond it), QUEUE_TIMEOUT_SECONDS (503), slots given back on every path
(clients that vanish while queued or streaming), queue time in the metrics,
and a node's max_concurrency making requests wait in llmux rather than in the
node. docs/ROUTING.md ("Admission") is the reference.
"""
import concurrent.futures as cf
import json
import re
import socket
import struct
import threading
import time

import pytest

from conftest import T
from e2e_util import RawConn, assert_openai_error, chat_body, raw_request, wait_for

CHAT = "/v1/chat/completions"
BODY = json.dumps(chat_body(content="admission", max_tokens=2)).encode()
STREAM_BODY = json.dumps(chat_body(content="admission", max_tokens=2, stream=True)).encode()


def metric(lx, name, **labels):
    """The value of one sample of llmux's /metrics (0 when absent)."""
    text = lx.client.get("/metrics").text
    want = ",".join('%s="%s"' % kv for kv in labels.items())
    for line in text.splitlines():
        m = re.match(r"^([a-z_:]+)(?:\{(.*)\})? (\S+)$", line)
        if m and m.group(1) == name and (m.group(2) or "") == want:
            return float(m.group(3))
    return 0.0


def gateway(lx):
    r = lx.client.get("/stats")
    assert r.status_code == 200, r.text
    return r.json()["gateway"]


def wait_gateway(lx, what, **want):
    """Waits until /stats gateway fields equal <want>; returns the snapshot."""
    return wait_for(lambda: (lambda g: g if all(g[k] == v for k, v in want.items()) else None)(
        gateway(lx)), T(10), interval=0.005, what=what)


@pytest.fixture
def held(procs):
    """Raw client connections; closed before the processes stop."""
    conns = []
    yield conns
    for c in conns:
        c.close()


def send(lx, held, xsim, body=BODY):
    c = RawConn(lx.port, timeout=T(30))
    c.send(raw_request("POST", CHAT, body, headers=[("Content-Type", "application/json"),
                                                    ("x-sim", xsim)]))
    held.append(c)
    return c


def reset(c):
    """Closes a client socket abruptly (RST)."""
    try:
        c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    c.close()


def write_config(tmp_path, pools):
    cfg = tmp_path / "llmux.json"
    cfg.write_text(json.dumps({"models": pools}))
    return cfg


# ---- the limit and the queue --------------------------------------------------------

def test_limit_and_queue_answer_five_and_refuse_three(procs):
    """--max-concurrent 2 --max-queue 3 and eight concurrent slow requests:
    2 run, 3 wait, 3 are refused at once with 429 and Retry-After."""
    sim = procs.sim(fast=True)
    lx = procs.llmux([sim], args=["--max-concurrent", "2", "--max-queue", "3"])
    delay_ms = int(T(0.8) * 1000)
    n = 8
    barrier = threading.Barrier(n, timeout=T(30))

    def one(i):
        with lx.new_client(timeout=T(60)) as c:
            barrier.wait()
            t0 = time.monotonic()
            r = c.post(CHAT, content=BODY, headers={"x-sim": "delay_ms=%d" % delay_ms})
            return r, time.monotonic() - t0

    with cf.ThreadPoolExecutor(n) as ex:
        results = list(ex.map(one, range(n)))
    ok = [r for r, _ in results if r.status_code == 200]
    refused = [(r, t) for r, t in results if r.status_code == 429]
    assert (len(ok), len(refused)) == (5, 3), [r.status_code for r, _ in results]
    for r, t in refused:
        err = assert_openai_error(r.json())
        assert err["code"] == "queue_full", err
        assert 1 <= int(r.headers["retry-after"]) <= 60, r.headers
        # Refused at once, not after waiting for a slot.
        assert t < delay_ms / 1000, t
    assert sim.stats()["requests_total"] == 5
    g = gateway(lx)
    assert g["queue_full_total"] == 3 and g["queued_total"] == 3, g
    assert g["active_requests"] == 0 and g["queue_depth"] == 0, g
    assert metric(lx, "llmux_requests_rejected_total", reason="queue_full") == 3
    assert metric(lx, "llmux_requests_total", model="sim-model", status="429") == 3
    # Queue time is measured, and counted in the request latency too.
    assert metric(lx, "llmux_queue_wait_seconds_count") == 3
    wait_sum = metric(lx, "llmux_queue_wait_seconds_sum")
    assert wait_sum >= 0.9 * 4 * delay_ms / 1000, wait_sum  # waits of 1, 1 and 2 delays
    lat_sum = metric(lx, "llmux_request_latency_seconds_sum", model="sim-model")
    assert lat_sum >= wait_sum + 0.9 * 5 * delay_ms / 1000, (lat_sum, wait_sum)


def test_queue_timeout_is_503_with_retry_after(procs, held):
    sim = procs.sim(fast=True)
    lx = procs.llmux([sim], args=["--max-concurrent", "1", "--queue-timeout", "0.5"])
    send(lx, held, "hang=1")
    wait_gateway(lx, "the slot to be taken", active_requests=1)
    t0 = time.monotonic()
    r = lx.client.post(CHAT, content=BODY, headers={"X-Request-Id": "qt-1"})
    elapsed = time.monotonic() - t0
    assert r.status_code == 503, r.text
    err = assert_openai_error(r.json())
    assert err["code"] == "queue_timeout", err
    assert 1 <= int(r.headers["retry-after"]) <= 60, r.headers
    assert r.headers["x-request-id"] == "qt-1"
    assert elapsed >= 0.45, elapsed
    # The holder is still there: the 503 came from the wait, not from a free slot.
    g = gateway(lx)
    assert g["active_requests"] == 1 and g["queue_depth"] == 0, g
    assert g["queue_timeouts_total"] == 1, g
    # Never bound to a node.
    assert sim.stats()["requests_total"] == 1
    assert metric(lx, "llmux_requests_rejected_total", reason="queue_timeout") == 1
    held[0].close()
    wait_gateway(lx, "the slot to be given back", active_requests=0)
    assert lx.client.post(CHAT, content=BODY).status_code == 200


def test_queue_is_fifo_across_workers(procs, held):
    """One slot, a holder, then four requests queued one after another (on
    separate connections, so on any worker): they are served in arrival order."""
    sim = procs.sim(fast=True)
    lx = procs.llmux([sim], args=["--max-concurrent", "1", "--max-queue", "10"], workers=2)
    holder = send(lx, held, "hang=1")
    wait_gateway(lx, "the slot to be taken", active_requests=1)
    conns = []
    for i in range(4):
        body = json.dumps(chat_body(content="fifo %d" % i, max_tokens=2)).encode()
        conns.append(send(lx, held, "delay_ms=30", body=body))
        wait_gateway(lx, "request %d to queue" % i, queue_depth=i + 1)
    done = {}

    def read(i):
        r = conns[i].read_response()
        done[i] = (time.monotonic(), r.status)

    readers = [threading.Thread(target=read, args=(i,)) for i in range(4)]
    for t in readers:
        t.start()
    holder.close()
    for t in readers:
        t.join(T(30))
    assert sorted(done) == [0, 1, 2, 3], done
    assert all(s == 200 for _, s in done.values()), done
    order = sorted(done, key=lambda i: done[i][0])
    assert order == [0, 1, 2, 3], order


def test_clients_gone_while_queued_never_reach_a_node(procs, held):
    sim = procs.sim(fast=True)
    lx = procs.llmux([sim], args=["--max-concurrent", "1", "--max-queue", "10"])
    holder = send(lx, held, "hang=1")
    wait_gateway(lx, "the slot to be taken", active_requests=1)
    queued = [send(lx, held, "delay_ms=1") for _ in range(5)]
    wait_gateway(lx, "five queued", queue_depth=5)
    for i, c in enumerate(queued):
        reset(c) if i % 2 else c.close()
    # Taken out of the queue at once, while the slot is still held.
    wait_gateway(lx, "the queue to empty", queue_depth=0, active_requests=1)
    holder.close()
    wait_gateway(lx, "the slot to be given back", active_requests=0)
    assert lx.client.post(CHAT, content=BODY).status_code == 200
    st = sim.stats()
    assert st["requests_total"] == 2, st  # the holder and the last one only
    assert st["aborted_total"] == 1, st


# ---- slots are never leaked --------------------------------------------------------

def test_vanishing_clients_never_leak_a_slot(procs, held):
    """100 cycles: fill every slot (streams that have started, or requests the
    node holds), queue two more, then close all those client sockets abruptly
    in varying orders. Afterwards nothing is active or queued, the node has
    nothing left, and N requests can again run at once."""
    sim = procs.sim()
    slots, cycles = 3, 100
    lx = procs.llmux([sim], args=["--max-concurrent", str(slots), "--max-queue", "4"])
    queued_before = gateway(lx)["queued_total"]
    for k in range(cycles):
        conns = []
        for i in range(slots):
            if (k + i) % 2:
                c = send(lx, held, "ttft_ms=60000", body=STREAM_BODY)
                status = c.read_head()[1]  # the stream has started
                assert status == 200, (k, i, status)
            else:
                c = send(lx, held, "hang=1")
            conns.append(c)
        wait_gateway(lx, "cycle %d: slots taken" % k, active_requests=slots)
        for i in range(2):
            conns.append(send(lx, held, "hang=1" if i else "ttft_ms=60000",
                              body=BODY if i else STREAM_BODY))
        wait_gateway(lx, "cycle %d: two queued" % k, queue_depth=2)
        order = k % 4
        if order == 0:  # queued ones first
            conns = conns[slots:] + conns[:slots]
        elif order == 1:  # holders first: freed slots go to queued clients that are gone
            pass
        elif order == 2:
            conns.reverse()
        else:
            conns = conns[1::2] + conns[0::2]
        for j, c in enumerate(conns):
            reset(c) if (j + k) % 3 == 0 else c.close()
        del held[:]
    g = wait_gateway(lx, "every slot and queue place to be given back",
                     active_requests=0, queue_depth=0)
    assert g["queue_full_total"] == 0 and g["queue_timeouts_total"] == 0, g
    wait_for(lambda: (lambda s: s if s["running"] == 0 and s["waiting"] == 0 and s["hung"] == 0
                      else None)(sim.stats()), T(10), what="the node to drop every request")
    assert lx.node_stats()[sim.url]["in_flight"] == 0
    # Cancelled requests that were queued never reached the node: at most the
    # holders plus the queued ones that were granted a slot as it was closing.
    assert sim.stats()["requests_total"] <= cycles * (slots + 2)

    # All N slots are usable at once: N streams all start (head received)
    # while all N are held, and none of them waited in the queue.
    queued_mid = gateway(lx)["queued_total"]
    assert queued_mid >= queued_before + 2 * cycles
    streams = []
    for i in range(slots):
        c = send(lx, held, "ttft_ms=60000", body=STREAM_BODY)
        streams.append(c)
    for c in streams:
        assert c.read_head()[1] == 200
    g = gateway(lx)
    assert g["active_requests"] == slots and g["queued_total"] == queued_mid, g
    # One more has to wait: the limit is N exactly.
    send(lx, held, "hang=1")
    wait_gateway(lx, "the extra request to queue", queue_depth=1, queued_total=queued_mid + 1)


# ---- max_concurrency: wait in llmux, not in the node -----------------------------------

def test_max_concurrency_requests_wait_in_llmux(procs, tmp_path):
    sim = procs.sim()
    cfg = write_config(tmp_path, {"*": {"servers": [{"url": sim.url, "name": "only",
                                                     "max_concurrency": 1}]}})
    lx = procs.llmux(args=["--config", cfg])
    hold_ms = int(T(0.5) * 1000)
    peak = {"node": 0, "parked": 0}
    done = threading.Event()

    def poll():
        while not done.is_set():
            st = sim.stats()
            peak["node"] = max(peak["node"], st["running"] + st["waiting"] + st["hung"])
            parked = lx.client.get("/stats").json()["models"][0]["parked"]
            peak["parked"] = max(peak["parked"], parked)
            time.sleep(0.005)

    def one(i):
        with lx.new_client() as c:
            r = c.post(CHAT, content=BODY, headers={"x-sim": "ttft_ms=%d" % hold_ms})
            return r.status_code, r.headers.get("x-routed-node")

    poller = threading.Thread(target=poll)
    poller.start()
    try:
        with cf.ThreadPoolExecutor(2) as ex:
            results = list(ex.map(one, range(2)))
    finally:
        done.set()
        poller.join(T(10))
    assert results == [(200, "only"), (200, "only")], results
    assert peak["node"] == 1, peak
    assert peak["parked"] == 1, peak
    st = sim.stats()
    assert st["requests_total"] == 2 and st["completed_total"] == 2, st
    # Parking is not the admission queue: both held a slot.
    assert gateway(lx)["queued_total"] == 0


def test_parked_request_times_out_with_503(procs, tmp_path, held):
    sim = procs.sim(fast=True)
    cfg = write_config(tmp_path, {"*": {"servers": [{"url": sim.url, "name": "only",
                                                     "max_concurrency": 1}]}})
    lx = procs.llmux(args=["--config", cfg, "--queue-timeout", "0.5"])
    send(lx, held, "hang=1")
    wait_for(lambda: lx.node_stats()["only"]["in_flight"] == 1, T(10), what="the holder")
    r = lx.client.post(CHAT, content=BODY)
    assert r.status_code == 503, r.text
    assert assert_openai_error(r.json())["code"] == "queue_timeout"
    assert "retry-after" in r.headers
    assert sim.stats()["requests_total"] == 1
    held[0].close()
    wait_for(lambda: lx.node_stats()["only"]["in_flight"] == 0, T(10), what="the holder to go")
    wait_gateway(lx, "the slots to be free", active_requests=0)
    assert lx.client.post(CHAT, content=BODY).status_code == 200
