"""
Stream resume (STREAM_RESUME): a streamed chat or completion whose node
fails after the response started is continued on another node, and the
client gets one stream, the same as an unbroken one: the same text, id and
created throughout, one role delta, one [DONE], no error event, usage as the
unbroken answer counts it.

llmux-sim continues exactly as vLLM does (docs/SIM.md): a node started with
--drop-after N breaks every stream after N tokens; another node given the
relayed text goes on with the very words the first would have said.
"""
import json
import re
import threading
import time

import pytest

from conftest import T
from e2e_util import chat_body, completion_body, read_sse, wait_for

CHAT = "/v1/chat/completions"
COMPL = "/v1/completions"


def body_for(path, i, max_tokens=30, **extra):
    if path == CHAT:
        return chat_body(content="conversation %d: tell me more" % i, stream=True,
                         max_tokens=max_tokens, **extra)
    return completion_body(prompt="story %d began" % i + "," * (i % 4), stream=True,
                           max_tokens=max_tokens, **extra)


def stream(client, path, body, headers=None):
    """(events as parsed JSON, raw events, whether [DONE] came, routed node)."""
    with client.stream("POST", path, content=json.dumps(body).encode(),
                       headers=headers or {}) as r:
        assert r.status_code == 200, r.read()
        events = read_sse(r)
        node = r.headers.get("x-routed-node")
    done = [e for e in events if e.done]
    chunks = [e.json() for e in events if not e.done]
    return chunks, events, len(done), node


def text_of(path, chunks):
    out = ""
    for c in chunks:
        for ch in c.get("choices") or []:
            out += (ch.get("delta", {}).get("content") or "") if path == CHAT else ch.get("text", "")
    return out


def strip_ids(chunks):
    return [{k: v for k, v in c.items() if k not in ("id", "created")} for c in chunks]


def assert_one_stream(path, chunks, ndone, want_chunks):
    """One unbroken-looking stream equal to <want_chunks> but for id/created."""
    assert ndone == 1, "one [DONE] expected, got %d" % ndone
    assert not any("error" in c for c in chunks), [c for c in chunks if "error" in c]
    assert len({c["id"] for c in chunks}) == 1, {c["id"] for c in chunks}
    assert len({c["created"] for c in chunks}) == 1
    if path == CHAT:
        roles = [c for c in chunks if c["choices"] and "role" in c["choices"][0]["delta"]]
        assert len(roles) == 1, roles
    assert text_of(path, chunks) == text_of(path, want_chunks)
    assert strip_ids(chunks) == strip_ids(want_chunks)


def resumes(lx):
    m = lx.client.get("/metrics").text
    got = {}
    for outcome in ("resumed", "failed"):
        hit = re.search(r'^llmux_stream_resumes_total\{outcome="%s"\} (\d+)' % outcome, m, re.M)
        got[outcome] = int(hit.group(1)) if hit else None
    return got


@pytest.mark.parametrize("path", [CHAT, COMPL], ids=["chat", "completions"])
def test_streams_broken_by_a_node_are_resumed_whole(procs, path):
    """20 streams in flight over 3 nodes, one of which breaks every stream
    after 5 tokens: every client gets the whole answer."""
    broken = procs.sim(decode_ms=5, drop_after=5)
    good = [procs.sim(decode_ms=5) for _ in range(2)]
    ref = procs.sim(fast=True)
    # Without passive ejection, the broken node keeps its third of the load.
    lx = procs.llmux([broken] + good, args=["--strategy", "round_robin"],
                     env={"EJECT_COOLDOWN_SECONDS": "0"})
    results = {}

    def client(i):
        with lx.new_client(timeout=T(30)) as c:
            results[i] = stream(c, path, body_for(path, i))

    threads = [threading.Thread(target=client, args=(i,)) for i in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(T(60))
    assert len(results) == 20
    for i, (chunks, _, ndone, _) in results.items():
        want, _, _, _ = stream(ref.client, path, body_for(path, i))
        assert_one_stream(path, chunks, ndone, want)
    n_broken = broken.stats()["dropped_total"]
    assert n_broken >= 5, broken.stats()  # round robin sent it about a third
    assert resumes(lx) == {"resumed": n_broken, "failed": 0}


@pytest.mark.parametrize("path", [CHAT, COMPL], ids=["chat", "completions"])
def test_node_killed_mid_stream(procs, path):
    """A node killed while it streams (20 streams over 3 nodes): its streams
    go on elsewhere, the text byte for byte what an unbroken node says."""
    sims = [procs.sim(decode_ms=20) for _ in range(3)]
    ref = procs.sim(fast=True)
    lx = procs.llmux(sims, args=["--strategy", "round_robin"])
    results = {}

    def client(i):
        with lx.new_client(timeout=T(30)) as c:
            results[i] = stream(c, path, body_for(path, i, max_tokens=40))

    threads = [threading.Thread(target=client, args=(i,)) for i in range(20)]
    for t in threads:
        t.start()
    victim = sims[0]
    wait_for(lambda: victim.stats()["running"] >= 3, T(10), what="streams on the victim")
    time.sleep(0.2)
    victim.kill()
    for t in threads:
        t.join(T(60))
    assert len(results) == 20
    for i, (chunks, _, ndone, _) in results.items():
        want, _, _, _ = stream(ref.client, path, body_for(path, i, max_tokens=40))
        assert_one_stream(path, chunks, ndone, want)
    assert resumes(lx)["resumed"] >= 3


@pytest.mark.parametrize("path", [CHAT, COMPL], ids=["chat", "completions"])
def test_resumed_usage_is_the_unbroken_answers(procs, path):
    broken = procs.sim(fast=True, drop_after=7)
    good = procs.sim(fast=True)
    ref = procs.sim(fast=True)
    lx = procs.llmux([broken, good], args=["--strategy", "round_robin"])
    body = body_for(path, 3, max_tokens=20, stream_options={"include_usage": True})
    want, _, _, _ = stream(ref.client, path, body)
    for _ in range(2):  # one of them starts on the broken node
        chunks, _, ndone, _ = stream(lx.client, path, body)
        assert_one_stream(path, chunks, ndone, want)
        assert chunks[-1]["usage"] == want[-1]["usage"], (chunks[-1], want[-1])
    assert broken.stats()["dropped_total"] == 1


def test_stream_resume_off_keeps_the_error_event(procs):
    broken = procs.sim(fast=True, drop_after=4)
    good = procs.sim(fast=True)
    lx = procs.llmux([broken, good], args=["--strategy", "round_robin", "--stream-resume", "off"])
    outcomes = []
    for i in range(2):
        chunks, _, ndone, node = stream(lx.client, CHAT, body_for(CHAT, i))
        outcomes.append((node, ndone, "error" in chunks[-1]))
    assert sorted(outcomes) == sorted([(broken.url, 0, True), (good.url, 1, False)]), outcomes
    assert good.stats()["requests_total"] == 1, good.stats()


@pytest.mark.parametrize("extra", [{"n": 2}, {"logprobs": True, "top_logprobs": 2}],
                         ids=["n=2", "logprobs"])
def test_inexact_streams_are_not_resumed(procs, extra):
    """n > 1 and logprobs cannot be continued exactly: the stream ends with
    the error event, and no other node is asked."""
    broken = procs.sim(fast=True, drop_after=4)
    good = procs.sim(fast=True)
    lx = procs.llmux([broken, good], args=["--strategy", "round_robin"])
    seen = []
    for i in range(2):
        chunks, _, ndone, node = stream(lx.client, CHAT, body_for(CHAT, i, **extra))
        seen.append((node, ndone, "error" in chunks[-1]))
    assert (broken.url, 0, True) in seen, seen
    assert good.stats()["requests_total"] == 1, good.stats()
    assert resumes(lx) == {"resumed": 0, "failed": 0}


def test_resume_that_breaks_again_is_resumed_again(procs):
    """Every node breaks after 4 tokens: with MAX_RETRIES 2 the stream goes
    over three nodes; with 1 retry left after, it ends with the error event
    and the text relayed so far is still the unbroken answer's beginning."""
    sims = [procs.sim(fast=True, drop_after=4) for _ in range(3)]
    ref = procs.sim(fast=True)
    lx = procs.llmux(sims, args=["--strategy", "round_robin", "--max-retries", "2"])
    want, _, _, _ = stream(ref.client, CHAT, body_for(CHAT, 1, max_tokens=10))
    chunks, _, ndone, _ = stream(lx.client, CHAT, body_for(CHAT, 1, max_tokens=10))
    # 4 tokens from the first node, 4 from the second, and the third is
    # asked for the last 2: it finishes before its own break.
    assert_one_stream(CHAT, chunks, ndone, want)
    assert sum(s.stats()["dropped_total"] for s in sims) == 2
    want, _, _, _ = stream(ref.client, CHAT, body_for(CHAT, 2, max_tokens=30))
    chunks, _, ndone, _ = stream(lx.client, CHAT, body_for(CHAT, 2, max_tokens=30))
    assert ndone == 0 and "error" in chunks[-1], chunks[-2:]
    assert text_of(CHAT, chunks[:-1]) == text_of(CHAT, want)[:len(text_of(CHAT, chunks[:-1]))]
    assert len(text_of(CHAT, chunks[:-1])) == 12 * 4  # 3 nodes x 4 tokens of 4 bytes
    got = resumes(lx)
    assert got == {"resumed": 1, "failed": 1}, got
