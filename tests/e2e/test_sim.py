"""llmux-sim against what vLLM does (docs/SIM.md, "The model").

The prefix cache: vLLM (v1) keeps one pool of KV blocks for running sequences
and the prefix cache; a finished sequence's blocks stay cached, generated
tokens included, until new sequences take them (least recently freed first, a
sequence's tail before its head). It counts, per request, the prompt tokens
queried and the tokens found, in full blocks, at most (prompt - 1) /
block_size blocks. Multi-turn chat relies on that: turn k+1 resends turn k's
prompt and answer, so it hits both.

The text: the next word is a function of the whole context before it, as a
real model's at temperature 0, so a request that resends the first k words of
an answer as a continuation (a completions prompt followed by them, or a chat
whose final assistant message is continued, vLLM's continue_final_message)
gets the rest of that answer, byte for byte: what a gateway needs to resume a
broken stream on another node. --drop-after and SIGKILL break streams for such
tests.
"""
import json
import signal
import threading
import time

import httpx
import pytest

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


# ---- continuations ----------------------------------------------------------

WORD = 4  # bytes of one output word ("fox "): one token


def content_of(path, choice):
    return choice["message"]["content"] if path == CHAT else choice["text"]


def ask(sim, path, body, headers=None):
    """One non-streamed request: (text, usage, finish_reason)."""
    r = sim.client.post(path, json=body, headers=headers or {})
    assert r.status_code == 200, r.text
    j = r.json()
    return content_of(path, j["choices"][0]), j["usage"], j["choices"][0]["finish_reason"]


def ask_stream(sim, path, body, headers=None):
    """One streamed request: (concatenated deltas, usage, finish_reason)."""
    body = dict(body, stream=True, stream_options={"include_usage": True})
    parts, usage, finish = [], None, None
    with sim.client.stream("POST", path, json=body, headers=headers or {}) as r:
        assert r.status_code == 200
        for line in r.iter_lines():
            line = line.strip()
            if not line.startswith("data: {"):
                continue
            ev = json.loads(line[6:])
            if ev["choices"]:
                c = ev["choices"][0]
                parts.append((c["delta"].get("content") if path == CHAT else c["text"]) or "")
                finish = c["finish_reason"] or finish
            if ev.get("usage"):
                usage = ev["usage"]
    return "".join(parts), usage, finish


def answer(sim, path, body, stream, headers=None):
    return (ask_stream if stream else ask)(sim, path, body, headers)


def continued_chat(msgs, partial, **fields):
    """The chat request that continues <partial>, the start of the answer to
    <msgs>, as a gateway resuming a stream sends it."""
    return dict({"model": "sim-model",
                 "messages": msgs + [{"role": "assistant", "content": partial}],
                 "continue_final_message": True, "add_generation_prompt": False}, **fields)


MSGS = [{"role": "system", "content": "You answer in three-letter words."},
        {"role": "user", "content": "Tell me about the fox, please."}]


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_chat_continuation_is_the_rest_of_the_answer(procs, stream):
    """Messages M, max_tokens N: content C = w0..wN-1. M plus an assistant
    message w0..wk-1, continued, max_tokens N-k: wk..wN-1 exactly, with k
    more prompt tokens (the assistant's header counts as the generation
    prompt did), for k from 0 to N-1, streamed or not, either way round."""
    sim = procs.sim(fast=True)
    n = 12
    full, usage, finish = answer(sim, CHAT, {"model": "sim-model", "messages": MSGS,
                                             "max_tokens": n}, stream)
    assert (len(full), finish, usage["completion_tokens"]) == (WORD * n, "length", n)
    # The other mode gives the same text.
    assert answer(sim, CHAT, {"model": "sim-model", "messages": MSGS, "max_tokens": n},
                  not stream)[0] == full
    for k in (0, 1, 2, 5, n - 1):
        body = continued_chat(MSGS, full[:WORD * k], max_tokens=n - k)
        for mode in (stream, not stream):
            rest, u, finish = answer(sim, CHAT, body, mode)
            assert rest == full[WORD * k:], (k, mode)
            assert finish == "length"
            assert u["prompt_tokens"] == usage["prompt_tokens"] + k
            assert u["completion_tokens"] == n - k
            assert u["total_tokens"] == usage["total_tokens"]


def test_chat_continuation_hits_the_prefix_cache(procs):
    """The continuation's prompt is the original's prompt and first k
    tokens: it hits every full block of them the original cached."""
    sim = procs.sim(fast=True)
    msgs = [{"role": "user", "content": text(5 * BS + 3, "long question")}]
    full, usage, _ = chat(sim, msgs, 3 * BS)
    k = BS + 5
    j, hits, queries = post(sim, CHAT, continued_chat(msgs, full[:WORD * k], max_tokens=BS))
    assert queries == usage["prompt_tokens"] + k == j["usage"]["prompt_tokens"]
    assert hits == (queries - 1) // BS * BS
    assert j["choices"][0]["message"]["content"] == full[WORD * k:WORD * (k + BS)]


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_completion_continuation_whatever_the_prompt_length(procs, stream):
    """Prompt P, max_tokens N: text T = w0..wN-1. Prompt P + w0..wk-1,
    max_tokens N-k: wk..wN-1, for every len(P) % 4 (the context is bytes,
    not 4-byte tokens), with ceil(len(P) / 4) + k prompt tokens."""
    sim = procs.sim(fast=True)
    n = 10
    for length in (40, 41, 42, 43):
        prompt = ("Once upon a time, in a land far away, " * 2)[:length]
        full, usage, _ = answer(sim, COMPLETIONS, {"model": "sim-model", "prompt": prompt,
                                                   "max_tokens": n}, stream)
        assert len(full) == WORD * n
        assert usage["prompt_tokens"] == (length + 3) // 4
        for k in (0, 3, n - 1):
            rest, u, finish = answer(sim, COMPLETIONS, {
                "model": "sim-model", "prompt": prompt + full[:WORD * k], "max_tokens": n - k},
                stream)
            assert rest == full[WORD * k:], (length, k)
            assert finish == "length"
            assert u["prompt_tokens"] == usage["prompt_tokens"] + k
            assert u["completion_tokens"] == n - k


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_natural_length_counts_the_part_already_given(procs, stream):
    """x-sim tokens=N is the whole answer's length: a continuation of k
    tokens stops after N-k more, at the same place as the unbroken answer,
    with finish_reason "stop"; one of all N tokens gets only the end of
    sequence (no text, one completion token). The same for --max-tokens,
    the natural length of a request without max_tokens, and for completions,
    whose resent words are found at the end of the prompt."""
    sim = procs.sim(fast=True, max_tokens=9)
    hdr = {"x-sim": "tokens=11"}
    cases = [(CHAT, {"model": "sim-model", "messages": MSGS, "max_tokens": 50}, hdr, 11),
             (CHAT, {"model": "sim-model", "messages": MSGS}, None, 9),
             (COMPLETIONS, {"model": "sim-model", "prompt": "Say it: ", "max_tokens": 50}, hdr,
              11),
             (COMPLETIONS, {"model": "sim-model", "prompt": "Say it again: "}, None, 9)]
    for path, body, headers, n in cases:
        full, usage, finish = answer(sim, path, body, stream, headers)
        assert (len(full), finish) == (WORD * n, "stop"), (path, body)
        for k in (1, 4, n - 1, n):
            if path == CHAT:
                cont = continued_chat(body["messages"], full[:WORD * k])
                if "max_tokens" in body:
                    cont["max_tokens"] = body["max_tokens"]
            else:
                cont = dict(body, prompt=body["prompt"] + full[:WORD * k])
            rest, u, finish = answer(sim, path, cont, stream, headers)
            assert rest == full[WORD * k:], (path, k)
            assert finish == "stop"
            assert u["completion_tokens"] == max(n - k, 1)  # the end of sequence is a token
            assert u["prompt_tokens"] == usage["prompt_tokens"] + k


def test_continuation_errors_are_vllms(procs):
    sim = procs.sim(fast=True)
    partial = MSGS + [{"role": "assistant", "content": "the "}]
    both = "Cannot set both `continue_final_message` and `add_generation_prompt` to True."
    cases = [
        ({"messages": partial, "continue_final_message": True, "add_generation_prompt": True},
         both),
        # add_generation_prompt defaults to true: a continuation must turn it off.
        ({"messages": partial, "continue_final_message": True}, both),
        ({"messages": MSGS, "continue_final_message": True, "add_generation_prompt": False},
         "Cannot set `continue_final_message` to True when the last message is not from the "
         "assistant."),
        ({"messages": partial, "continue_final_message": "yes", "add_generation_prompt": False},
         "continue_final_message must be a boolean"),
        ({"messages": MSGS, "add_generation_prompt": 1}, "add_generation_prompt must be a boolean"),
    ]
    for body, message in cases:
        r = sim.client.post(CHAT, json=dict(body, model="sim-model", max_tokens=4))
        assert r.status_code == 400, (body, r.text)
        assert r.json() == {"object": "error", "message": message, "type": "BadRequestError",
                            "param": None, "code": 400}
    # add_generation_prompt false alone: no assistant header, another answer.
    with_prompt, u1, _ = ask(sim, CHAT, {"model": "sim-model", "messages": MSGS, "max_tokens": 6})
    without, u2, _ = ask(sim, CHAT, {"model": "sim-model", "messages": MSGS, "max_tokens": 6,
                                     "add_generation_prompt": False})
    assert u2["prompt_tokens"] == u1["prompt_tokens"] - 4
    assert without != with_prompt


def read_broken_stream(client, path, body, headers=None):
    """Streams until the node closes the connection; returns the deltas."""
    parts = []
    with client.stream("POST", path, json=dict(body, stream=True), headers=headers or {}) as r:
        assert r.status_code == 200
        with pytest.raises(httpx.HTTPError):
            for line in r.iter_lines():
                line = line.strip()
                if line.startswith("data: {"):
                    c = json.loads(line[6:])["choices"][0]
                    assert c["finish_reason"] is None
                    parts.append((c["delta"].get("content") if path == CHAT else c["text"]) or "")
    return parts


def test_drop_after_flag_breaks_every_request_and_another_node_resumes(procs):
    """--drop-after 5: every stream closes after its 5th token event, every
    non-streamed request without an answer, unless the request sets its own
    x-sim drop_after. What it relayed, continued on a node without the flag,
    is the unbroken answer."""
    flaky = procs.sim(fast=True, drop_after=5)
    good = procs.sim(fast=True)
    n = 16
    body = {"model": "sim-model", "messages": MSGS, "max_tokens": n}
    for attempt in range(2):
        parts = read_broken_stream(flaky.client, CHAT, body)
        assert len(parts) == 6 and parts[0] == ""  # the role chunk, then 5 tokens
    relayed = "".join(parts)
    rest, _, finish = ask_stream(good, CHAT, continued_chat(MSGS, relayed, max_tokens=n - 5))
    assert relayed + rest == ask(good, CHAT, body)[0]
    assert finish == "length"
    # Completions too.
    cbody = {"model": "sim-model", "prompt": "The fox", "max_tokens": n}
    relayed = "".join(read_broken_stream(flaky.client, COMPLETIONS, cbody))
    assert len(relayed) == WORD * 5
    rest, _, _ = ask(good, COMPLETIONS, dict(cbody, prompt="The fox" + relayed, max_tokens=n - 5))
    assert relayed + rest == ask(good, COMPLETIONS, cbody)[0]
    # Non-streamed: the connection closes without a byte of answer.
    with pytest.raises(httpx.HTTPError):
        flaky.client.post(CHAT, json=body)
    # A shorter answer is not broken; the request's own directive wins.
    assert ask(flaky, CHAT, dict(body, max_tokens=4))[2] == "length"
    assert ask(flaky, CHAT, body, {"x-sim": "drop_after=100"})[0] == ask(good, CHAT, body)[0]
    assert len(read_broken_stream(flaky.client, CHAT, body, {"x-sim": "drop_after=2"})) == 3
    st = flaky.stats()
    assert (st["dropped_total"], st["running"]) == (5, 0), st


def test_sigkill_mid_stream(procs):
    """A node killed mid-stream: the client's read fails, nothing hangs, and
    the relayed text continues on another node as if nothing happened."""
    victim = procs.sim(decode_ms=20)
    good = procs.sim(fast=True)
    n = 40
    body = {"model": "sim-model", "messages": MSGS, "max_tokens": n, "stream": True}
    parts = []
    with victim.client.stream("POST", CHAT, json=body) as r:
        assert r.status_code == 200
        with pytest.raises(httpx.HTTPError):
            for line in r.iter_lines():
                line = line.strip()
                if line.startswith("data: {"):
                    parts.append(json.loads(line[6:])["choices"][0]["delta"].get("content") or "")
                    if len(parts) == 4:
                        victim.signal(signal.SIGKILL)
    victim.kill()
    assert victim.rc == -signal.SIGKILL
    relayed = "".join(parts)
    k = len(relayed) // WORD
    assert 3 <= k < n and len(relayed) == WORD * k
    rest, _, _ = ask(good, CHAT, continued_chat(MSGS, relayed, max_tokens=n - k))
    assert relayed + rest == ask(good, CHAT, dict(body, stream=False))[0]
