"""llmux-sim's prefix cache, against what vLLM does (docs/SIM.md, "The model").

vLLM (v1) keeps one pool of KV blocks for running sequences and the prefix
cache; a finished sequence's blocks stay cached, generated tokens included,
until new sequences take them (least recently freed first, a sequence's tail
before its head). It counts, per request, the prompt tokens queried and the
tokens found, in full blocks, at most (prompt - 1) / block_size blocks.
Multi-turn chat relies on that: turn k+1 resends turn k's prompt and answer,
so it hits both.
"""
import json
import threading
import time

import httpx

from conftest import T

BS = 16  # llmux-sim's default --block-size
CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"


def counters(sim):
    st = sim.stats()
    return st["prefix_cache_hit_tokens"], st["prefix_cache_query_tokens"]


def post(sim, path, body, headers=None):
    """One request; returns (json, hit tokens, queried tokens) of it alone."""
    h0, q0 = counters(sim)
    r = sim.client.post(path, json=body, headers=headers or {})
    assert r.status_code == 200, r.text
    h1, q1 = counters(sim)
    return r.json(), h1 - h0, q1 - q0


def chat(sim, messages, max_tokens):
    j, hits, queries = post(sim, CHAT, {"model": "sim-model", "messages": messages,
                                        "max_tokens": max_tokens})
    assert j["usage"]["prompt_tokens"] == queries
    return j["choices"][0]["message"]["content"], j["usage"], hits


def text(n_tokens, tag):
    """n_tokens sim tokens (4 bytes each) of text unique to <tag>."""
    s = (tag + ": " + " ".join("w%d" % i for i in range(n_tokens * 2)))[:4 * n_tokens]
    assert len(s) == 4 * n_tokens
    return s


def test_counts_like_vllm_per_request_in_full_blocks(procs):
    sim = procs.sim(fast=True)
    prompt = text(20 * BS, "p")               # exactly 20 blocks
    body = {"model": "sim-model", "prompt": prompt, "max_tokens": 4}
    _, hits, queries = post(sim, COMPLETIONS, body)
    assert (hits, queries) == (0, 20 * BS)
    # The same prompt again: every block but the last, whose last token is
    # always recomputed.
    _, hits, queries = post(sim, COMPLETIONS, body)
    assert (hits, queries) == (19 * BS, 20 * BS)
    # A prompt that shares 10 blocks and a half: 10 blocks.
    other = prompt[:4 * (10 * BS + BS // 2)] + text(5 * BS, "q")
    _, hits, queries = post(sim, COMPLETIONS, dict(body, prompt=other))
    assert hits == 10 * BS and queries == len(other) // 4


def test_next_turn_hits_the_previous_prompt_and_answer(procs):
    """Turn k+1 = turn k's messages + the assistant's answer + a question: it
    hits every full block of turn k's prompt and of its generated tokens but
    the last, whether the answer came streamed or not."""
    sim = procs.sim(fast=True)
    msgs = [{"role": "system", "content": text(50 * BS + 3, "system")},
            {"role": "user", "content": text(21, "question 1")}]
    answer, usage, hits = chat(sim, msgs, 40)
    assert hits == 0
    # One output token is 4 bytes of text: the answer is 40 tokens again.
    assert usage["completion_tokens"] == 40 and len(answer) == 4 * 40
    for turn in range(2, 6):
        cached = (usage["prompt_tokens"] + usage["completion_tokens"] - 1) // BS * BS
        msgs += [{"role": "assistant", "content": answer},
                 {"role": "user", "content": text(7 + turn, "question %d" % turn)}]
        if turn % 2:
            answer, usage, hits = chat(sim, msgs, 40 + turn)
        else:
            answer, usage, hits = stream_chat(sim, msgs, 40 + turn)
        assert hits == cached, "turn %d" % turn
        assert usage["prompt_tokens"] - hits < 2 * BS + 4 * 2 + 7 + turn


def stream_chat(sim, msgs, max_tokens):
    h0, q0 = counters(sim)
    body = {"model": "sim-model", "messages": msgs, "max_tokens": max_tokens, "stream": True,
            "stream_options": {"include_usage": True}}
    parts, usage = [], None
    with sim.client.stream("POST", CHAT, json=body) as r:
        assert r.status_code == 200
        for line in r.iter_lines():
            line = line.strip()
            if not line.startswith("data: {"):
                continue
            ev = json.loads(line[6:])
            if ev["choices"]:
                parts.append(ev["choices"][0]["delta"].get("content") or "")
            if ev.get("usage"):
                usage = ev["usage"]
    h1, q1 = counters(sim)
    assert usage["prompt_tokens"] == q1 - q0
    return "".join(parts), usage, h1 - h0


def test_running_sequences_and_cached_blocks_share_one_pool(procs):
    """64 blocks in all. A's 30 prompt blocks are cached when it ends; B then
    needs 40 blocks: 33 never used, and 7 taken from the free queue, which
    evicts A's last blocks first (its tail was freed first). A again hits its
    first 24 blocks (a cache apart from the running sequences, or evicting
    A's head first, would give 29 or 0)."""
    sim = procs.sim(fast=True, kv_cache_tokens=64 * BS)
    a = {"model": "sim-model", "prompt": text(30 * BS, "a"), "max_tokens": 1}
    b = {"model": "sim-model", "prompt": text(600, "b"), "max_tokens": 40}
    post(sim, COMPLETIONS, a)
    post(sim, COMPLETIONS, b)
    _, hits, _ = post(sim, COMPLETIONS, a)
    assert hits == 24 * BS


def test_a_shared_prefix_is_held_once(procs):
    """Two sequences that share a cached 40-block prefix run side by side in
    a 64-block pool, though each holds 42 blocks: the prefix is shared, not
    reserved twice."""
    sim = procs.sim(kv_cache_tokens=64 * BS, decode_ms=5)
    prefix = text(40 * BS, "shared")
    post(sim, COMPLETIONS, {"model": "sim-model", "prompt": prefix, "max_tokens": 1})
    hold = {"x-sim": "ttft_ms=%d" % int(T(3) * 1000)}
    done = []

    def one(i):
        with httpx.Client(base_url=sim.url, timeout=T(30), trust_env=False) as c:
            r = c.post(COMPLETIONS, headers=hold, json={
                "model": "sim-model", "prompt": prefix + text(BS, "tail %d" % i), "max_tokens": 8})
            done.append(r.status_code)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    end = time.monotonic() + T(2)
    st = sim.stats()
    while time.monotonic() < end and st["running"] + st["waiting"] < 2:
        time.sleep(0.02)
        st = sim.stats()
    assert (st["running"], st["waiting"]) == (2, 0)
    # 40 shared blocks + 2 own blocks each (a 1-block tail + 8 tokens)
    assert st["kv_cache_used_tokens"] == (40 + 2 + 2) * BS
    for t in threads:
        t.join(T(30))
    assert done == [200, 200]
