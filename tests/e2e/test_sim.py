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
import base64
import json
import math
import random
import re
import signal
import struct
import threading
import time

import httpx
import pytest

from conftest import T
from e2e_util import iter_sse, read_sse

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
    """A streamed chat turn: (text, usage, prefix-cache hit tokens it made)."""
    h0, q0 = counters(sim)
    text, usage, _ = ask_stream(sim, CHAT, {"model": "sim-model", "messages": msgs,
                                           "max_tokens": max_tokens})
    h1, q1 = counters(sim)
    assert usage["prompt_tokens"] == q1 - q0
    return text, usage, h1 - h0


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


# ---- the rest of vLLM's OpenAI server ---------------------------------------

EMBEDDINGS = "/v1/embeddings"
RESPONSES = "/v1/responses"
TRANSCRIPTIONS = "/v1/audio/transcriptions"
TRANSLATIONS = "/v1/audio/translations"
DIM = 8  # llmux-sim's embedding size

# One good request per model endpoint (path, JSON body or multipart files).
GOOD = [
    (CHAT, {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}),
    (COMPLETIONS, {"model": "m", "prompt": "hi", "max_tokens": 2}),
    (RESPONSES, {"model": "m", "input": "hi", "max_output_tokens": 2}),
    (EMBEDDINGS, {"model": "m", "input": "hi"}),
    ("/pooling", {"model": "m", "input": "hi"}),
    ("/classify", {"model": "m", "input": "hi"}),
    ("/v1/rerank", {"model": "m", "query": "q", "documents": ["a", "b"]}),
    ("/rerank", {"model": "m", "query": "q", "documents": ["a", "b"]}),
    ("/v2/rerank", {"model": "m", "query": "q", "documents": ["a", "b"]}),
    ("/v1/score", {"model": "m", "text_1": "a", "text_2": "b"}),
    ("/score", {"model": "m", "text_1": "a", "text_2": "b"}),
    ("/tokenize", {"model": "m", "prompt": "hi"}),
    ("/detokenize", {"model": "m", "tokens": [26984]}),
    (TRANSCRIPTIONS, None),
    (TRANSLATIONS, None),
]


def send(client, path, body, headers=None, **kw):
    """POSTs a GOOD row: JSON, or a small audio file for the audio paths."""
    if body is None:
        return client.post(path, files={"file": ("a.wav", b"RIFF" + bytes(100), "audio/wav")},
                           data={"model": "m"}, headers=headers or {}, **kw)
    return client.post(path, json=body, headers=headers or {}, **kw)


def vllm_error(r, status, message=None):
    """Checks <r> is vLLM's error shape with <status> (and <message>)."""
    assert r.status_code == status, (r.status_code, r.text)
    assert r.headers["content-type"].startswith("application/json")
    j = r.json()
    assert set(j) == {"object", "message", "type", "param", "code"}, j
    assert j["object"] == "error" and j["code"] == status and j["param"] is None, j
    if message is not None:
        assert j["message"] == message, j
    return j


def unit(v):
    return math.isclose(math.sqrt(sum(x * x for x in v)), 1.0, rel_tol=1e-5)


def test_embeddings(procs):
    sim = procs.sim(fast=True)
    post_ = lambda body: sim.client.post(EMBEDDINGS, json=dict(body, model="emb"))
    r = post_({"input": "hello world"})
    assert r.status_code == 200, r.text
    j = r.json()
    assert j["object"] == "list" and j["model"] == "emb" and j["id"].startswith("embd-")
    assert isinstance(j["created"], int)
    assert j["usage"] == {"prompt_tokens": 3, "total_tokens": 3, "completion_tokens": 0,
                          "prompt_tokens_details": None}
    (d,) = j["data"]
    assert (d["index"], d["object"], len(d["embedding"])) == (0, "embedding", DIM)
    assert unit(d["embedding"])
    # A list: one vector per input, equal texts give equal vectors, the
    # same body the same bytes; token arrays are inputs too.
    r = post_({"input": ["hello world", "other", "hello world", [1, 2, 3]]})
    data = r.json()["data"]
    assert [x["index"] for x in data] == [0, 1, 2, 3]
    assert data[0]["embedding"] == d["embedding"] == data[2]["embedding"] != data[1]["embedding"]
    assert r.json()["usage"]["prompt_tokens"] == 3 + 2 + 3 + 3
    assert post_({"input": [1, 2, 3]}).json()["data"][0]["embedding"] == data[3]["embedding"]
    assert len(post_({"input": [[1, 2], [3]]}).json()["data"]) == 2
    assert post_({"input": "hello world"}).content == post_({"input": "hello world"}).content
    # base64: the little-endian float32s of the same vector; dimensions ignored.
    b = post_({"input": "hello world", "encoding_format": "base64", "dimensions": 3})
    raw = base64.b64decode(b.json()["data"][0]["embedding"])
    floats = struct.unpack("<%df" % DIM, raw)
    assert all(math.isclose(x, y, rel_tol=1e-6) for x, y in zip(floats, d["embedding"]))
    # Chat messages are an input too.
    m = post_({"messages": [{"role": "user", "content": "hi"}]})
    assert m.status_code == 200 and m.json()["usage"]["prompt_tokens"] == 4 + 1


@pytest.mark.parametrize("body,message", [
    ({}, None),
    ({"input": []}, None),
    ({"input": [""]}, "input[0] must not be empty"),
    ({"input": ""}, "input must not be empty"),
    ({"input": 5}, "input must be a string or an array of token ids"),
    ({"input": ["a", 5]}, "input[1] must be a string or an array of token ids"),
    ({"input": [[1, -2]]}, "input[0] must be a string or an array of token ids"),
    ({"input": "a", "encoding_format": "int8"}, 'encoding_format must be "float" or "base64"'),
    ({"input": "a", "model": 3}, "model must be a string"),
    ({"input": "x" * 4 * 65}, "This model's maximum context length is 64 tokens. However, you "
     "requested 65 tokens in the input for embedding generation. Please reduce the length of "
     "the input."),
])
def test_embeddings_refusals(procs, body, message):
    sim = procs.sim(fast=True, max_model_len=64, kv_cache_tokens=1024)
    vllm_error(sim.client.post(EMBEDDINGS, json=body), 400, message)
    for bad in (b"{not json", b"[1, 2]", b""):
        vllm_error(sim.client.post(EMBEDDINGS, content=bad), 400)


def test_pooling_and_classify(procs):
    sim = procs.sim(fast=True)
    emb = sim.client.post(EMBEDDINGS, json={"input": ["a b", "c"]}).json()
    pool = sim.client.post("/pooling", json={"model": "p", "input": ["a b", "c"]}).json()
    assert pool["id"].startswith("pool-") and pool["object"] == "list" and pool["model"] == "p"
    assert [x["object"] for x in pool["data"]] == ["pooling", "pooling"]
    assert [x["data"] for x in pool["data"]] == [x["embedding"] for x in emb["data"]]
    cls = sim.client.post("/classify", json={"model": "c", "input": ["a b", "c", "d"]}).json()
    assert cls["id"].startswith("classify-") and cls["object"] == "list" and cls["model"] == "c"
    assert cls["usage"]["prompt_tokens"] == 3
    for i, x in enumerate(cls["data"]):
        assert set(x) == {"index", "label", "probs", "num_classes"} and x["index"] == i
        assert x["num_classes"] == 2 and math.isclose(sum(x["probs"]), 1.0, rel_tol=1e-6)
        assert x["label"] == "LABEL_%d" % (x["probs"][1] > x["probs"][0])
    vllm_error(sim.client.post("/classify", json={"input": 7}), 400)


@pytest.mark.parametrize("path", ["/v1/rerank", "/rerank", "/v2/rerank"])
def test_rerank(procs, path):
    sim = procs.sim(fast=True)
    docs = ["the fox", "what a day", {"text": "a fox"}, "the quick brown fox", "owl"]
    r = sim.client.post(path, json={"model": "rr", "query": "the quick brown fox",
                                     "documents": docs})
    assert r.status_code == 200, r.text
    j = r.json()
    assert set(j) == {"id", "model", "usage", "results"} and j["id"].startswith("rerank-")
    assert j["model"] == "rr"
    assert j["usage"]["prompt_tokens"] == j["usage"]["total_tokens"] == \
        sum(5 + (len(d if isinstance(d, str) else d["text"]) + 3) // 4 for d in docs)
    res = j["results"]
    assert sorted(x["index"] for x in res) == list(range(len(docs)))
    scores = [x["relevance_score"] for x in res]
    assert scores == sorted(scores, reverse=True) and all(0 <= s <= 1 for s in scores)
    # The query itself is the most relevant, with a score of 1.
    assert res[0]["index"] == 3 and math.isclose(scores[0], 1.0, rel_tol=1e-6)
    for x in res:
        d = docs[x["index"]]
        assert x["document"] == {"text": d if isinstance(d, str) else d["text"]}
    top = sim.client.post(path, json={"query": "the quick brown fox", "documents": docs,
                                      "top_n": 2}).json()["results"]
    assert top == res[:2]
    for body in ({"documents": ["a"]}, {"query": "q", "documents": []},
                 {"query": "q", "documents": "a"}, {"query": "q", "documents": ["a", 1]},
                 {"query": "q", "documents": ["a"], "top_n": -1}):
        vllm_error(sim.client.post(path, json=body), 400)


def test_score(procs):
    sim = procs.sim(fast=True)
    for path in ("/v1/score", "/score"):
        j = sim.client.post(path, json={"model": "s", "text_1": "abc",
                                        "text_2": ["abc", "xyz", "abcd"]}).json()
        assert j["id"].startswith("score-") and j["object"] == "list" and j["model"] == "s"
        assert [(x["index"], x["object"]) for x in j["data"]] == [(i, "score") for i in range(3)]
        assert math.isclose(j["data"][0]["score"], 1.0, rel_tol=1e-6)
        assert all(0 <= x["score"] <= 1 for x in j["data"])
        assert j["usage"]["prompt_tokens"] == 1 + 1 + 1 + 1 + 1 + 1
        one = sim.client.post(path, json={"text_1": "abc", "text_2": "xyz"}).json()["data"]
        assert one == [dict(j["data"][1], index=0)]
        nn = sim.client.post(path, json={"text_1": ["xyz", "abc"],
                                         "text_2": ["abc", "abc"]}).json()["data"]
        assert nn[0]["score"] == j["data"][1]["score"] and math.isclose(nn[1]["score"], 1.0)
    vllm_error(sim.client.post("/score", json={"text_1": ["a", "b"], "text_2": ["a", "b", "c"]}),
               400, "Input lengths must be either 1:1, 1:N or N:N")
    for body in ({"text_1": "a"}, {"text_1": "a", "text_2": []}, {"text_1": 1, "text_2": "a"}):
        vllm_error(sim.client.post("/score", json=body), 400)


def test_tokenize_and_detokenize(procs):
    sim = procs.sim(fast=True, max_model_len=4096)
    text = "Hello, wörld! ünïcode and \"quotes\"\n"
    j = sim.client.post("/tokenize", json={"model": "t", "prompt": text}).json()
    n = (len(text.encode()) + 3) // 4
    assert j == {"count": n, "max_model_len": 4096, "tokens": j["tokens"], "token_strs": None}
    assert len(j["tokens"]) == n
    # A piece's id is its bytes, little-endian.
    assert j["tokens"][0] == int.from_bytes(text.encode()[:4], "little")
    back = sim.client.post("/detokenize", json={"model": "t", "tokens": j["tokens"]}).json()
    assert back == {"prompt": text}
    assert sim.client.post("/detokenize", json={"tokens": []}).json() == {"prompt": ""}
    # Ids that are not whole UTF-8 come back with U+FFFD, as valid JSON.
    assert sim.client.post("/detokenize", json={"tokens": [0xff, 0x41]}).json() == \
        {"prompt": "\ufffdA"}
    # Messages: the count is a chat's prompt tokens; template tokens have
    # special ids (no text); add_generation_prompt defaults to true.
    msgs = [{"role": "system", "content": "be brief"}, {"role": "user", "content": text}]
    chat_usage = ask(sim, CHAT, {"model": "t", "messages": msgs, "max_tokens": 1})[1]
    t = sim.client.post("/tokenize", json={"messages": msgs}).json()
    assert t["count"] == chat_usage["prompt_tokens"] == len(t["tokens"])
    assert sim.client.post("/tokenize", json={"messages": msgs, "add_generation_prompt": False}
                           ).json()["count"] == t["count"] - 4
    assert sim.client.post("/detokenize", json={"tokens": t["tokens"]}).json() == \
        {"prompt": "be brief" + text}
    for path, body in (("/tokenize", {}), ("/tokenize", {"prompt": 5}),
                       ("/tokenize", {"messages": []}), ("/detokenize", {}),
                       ("/detokenize", {"tokens": "abc"}), ("/detokenize", {"tokens": [1, -1]}),
                       ("/detokenize", {"tokens": [1.5]})):
        vllm_error(sim.client.post(path, json=body), 400)
    # Tokenizing runs no model: vLLM's counters do not move.
    assert sim.stats()["prompt_tokens_total"] == chat_usage["prompt_tokens"]


def responses_body(**kw):
    return dict({"model": "r", "instructions": "You answer in three-letter words.",
                 "input": "Tell me about the fox, please.", "max_output_tokens": 9}, **kw)


def test_responses_is_the_chat_model(procs):
    """instructions + input is a chat of a system and a user message: the
    same text and tokens; usage and the response object in OpenAI's shape."""
    sim = procs.sim(fast=True)
    r = sim.client.post(RESPONSES, json=responses_body(temperature=0.5))
    assert r.status_code == 200, r.text
    j = r.json()
    text, usage, _ = ask(sim, CHAT, {"model": "r", "messages": MSGS, "max_tokens": 9})
    assert j["id"].startswith("resp_") and j["object"] == "response"
    assert (j["status"], j["model"], j["instructions"]) == ("completed", "r", MSGS[0]["content"])
    assert (j["max_output_tokens"], j["temperature"], j["error"]) == (9, 0.5, None)
    (item,) = j["output"]
    assert item["type"] == "message" and item["role"] == "assistant"
    assert item["status"] == "completed" and item["id"].startswith("msg_")
    assert item["content"] == [{"type": "output_text", "text": text, "annotations": [],
                                "logprobs": []}]
    u = j["usage"]
    assert (u["input_tokens"], u["output_tokens"]) == (usage["prompt_tokens"], 9)
    assert u["total_tokens"] == usage["total_tokens"]
    assert u["input_tokens_details"] == {"cached_tokens": 0}
    assert u["output_tokens_details"] == {"reasoning_tokens": 0}
    # Input as message items with input_text parts: the same conversation.
    items = responses_body(instructions=None, input=[
        {"role": "system", "content": MSGS[0]["content"]},
        {"type": "message", "role": "user",
         "content": [{"type": "input_text", "text": MSGS[1]["content"]}]}])
    again = sim.client.post(RESPONSES, json=items).json()
    assert again["output"][0]["content"][0]["text"] == text
    # Without max_output_tokens: --max-tokens words, as a chat without max_tokens.
    j = sim.client.post(RESPONSES, json=responses_body(max_output_tokens=None)).json()
    assert j["usage"]["output_tokens"] == 16


def test_responses_prefix_cache(procs):
    sim = procs.sim(fast=True)
    body = responses_body(input=text(8 * BS, "long input"))
    first = sim.client.post(RESPONSES, json=body).json()["usage"]
    second = sim.client.post(RESPONSES, json=body).json()["usage"]
    assert first["input_tokens_details"]["cached_tokens"] == 0
    assert second["input_tokens_details"]["cached_tokens"] == \
        (second["input_tokens"] - 1) // BS * BS > 0


def read_events(resp):
    """A Responses stream's events: (event name, data JSON, arrival time)."""
    out = []
    for ev in iter_sse(resp):
        lines = ev.raw.split(b"\n")
        assert len(lines) == 2 and lines[0].startswith(b"event: "), ev.raw
        out.append((lines[0][7:].decode(), ev.json(), ev.t))
    return out


def test_responses_stream_events(procs):
    """OpenAI's event sequence, sequence numbers from 0, one delta per token
    as the decode steps make them, no [DONE]; the deltas, the done text and
    the completed response's text are the non-streamed text."""
    sim = procs.sim(decode_ms=30, decode_ms_per_seq=0)
    n = 6
    whole = sim.client.post(RESPONSES, json=responses_body(max_output_tokens=n)).json()
    with sim.client.stream("POST", RESPONSES,
                           json=responses_body(max_output_tokens=n, stream=True)) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        events = read_events(r)
    names = [e[0] for e in events]
    assert names == (["response.created", "response.in_progress", "response.output_item.added",
                      "response.content_part.added"] + ["response.output_text.delta"] * n +
                     ["response.output_text.done", "response.content_part.done",
                      "response.output_item.done", "response.completed"])
    assert [e[1]["type"] for e in events] == names
    assert [e[1]["sequence_number"] for e in events] == list(range(len(events)))
    created = events[0][1]["response"]
    assert created["status"] == "in_progress" and created["output"] == []
    assert created["usage"] is None and created["id"].startswith("resp_")
    item_id = events[2][1]["item"]["id"]
    # The same answer as the whole one, but for the ids (another body) and
    # the prefix-cache hit (the same prompt again).
    usage = whole["usage"]
    usage["input_tokens_details"]["cached_tokens"] = (usage["input_tokens"] - 1) // BS * BS
    whole = dict(whole, id=created["id"], output=[dict(whole["output"][0], id=item_id)])
    assert events[2][1]["item"]["status"] == "in_progress"
    text = whole["output"][0]["content"][0]["text"]
    deltas = [e[1] for e in events if e[0] == "response.output_text.delta"]
    assert all(d["item_id"] == item_id and d["output_index"] == 0 and d["content_index"] == 0
               for d in deltas)
    assert "".join(d["delta"] for d in deltas) == text
    assert events[-4][1]["text"] == text
    assert events[-3][1]["part"]["text"] == text
    assert events[-2][1]["item"] == whole["output"][0]
    assert events[-1][1]["response"] == whole
    # Paced by the decode steps: n deltas take about n - 1 steps.
    times = [e[2] for e in events if e[0] == "response.output_text.delta"]
    assert times[-1] - times[0] >= (n - 1) * 0.030 * 0.7


def test_responses_stream_drop_after(procs):
    """x-sim drop_after=N: the connection closes after the N-th delta, with
    no done events; counted as dropped."""
    sim = procs.sim(fast=True)
    names = []
    with sim.client.stream("POST", RESPONSES, json=responses_body(stream=True),
                           headers={"x-sim": "drop_after=3"}) as r:
        assert r.status_code == 200
        with pytest.raises(httpx.HTTPError):
            for ev in iter_sse(r):
                names.append(ev.raw.split(b"\n")[0].decode())
    assert names.count("event: response.output_text.delta") == 3
    assert "event: response.completed" not in names
    assert sim.stats()["dropped_total"] == 1


@pytest.mark.parametrize("body,message", [
    ({"input": None}, "input must be a string or a non-empty array of input items"),
    ({"input": []}, "input must be a string or a non-empty array of input items"),
    ({"input": [{"content": "no role"}]}, "input[0] must be an object with a string role"),
    ({"input": ["x"]}, "input[0] must be an object with a string role"),
    ({"instructions": 5}, "instructions must be a string"),
    ({"max_output_tokens": 0}, "max_output_tokens must be an integer of at least 1"),
    ({"max_output_tokens": "9"}, "max_output_tokens must be an integer of at least 1"),
    ({"max_output_tokens": 100000}, None),
])
def test_responses_refusals(procs, body, message):
    sim = procs.sim(fast=True)
    vllm_error(sim.client.post(RESPONSES, json=responses_body(**body)), 400, message)


def audio(client, path, data, fields=None, **kw):
    return client.post(path, files={"file": ("speech.wav", data, "audio/wav")},
                       data=dict({"model": "whisper"}, **(fields or {})), **kw)


def test_audio(procs):
    """The answer is a function of the audio's bytes: one word per started
    1000 bytes, the duration at 32,000 bytes a second; a translation has no
    usage; response_format text is answered in JSON too (vLLM's way)."""
    sim = procs.sim(fast=True)
    wav = bytes(range(256)) * 20  # 5120 bytes: 6 words, 1 s
    r = audio(sim.client, TRANSCRIPTIONS, wav)
    assert r.status_code == 200, r.text
    j = r.json()
    assert set(j) == {"text", "usage"} and j["usage"] == {"type": "duration", "seconds": 1}
    assert len(j["text"]) == WORD * 6
    assert audio(sim.client, TRANSCRIPTIONS, wav, {"response_format": "text"}).json() == j
    assert audio(sim.client, TRANSCRIPTIONS, wav).json() == j
    other = audio(sim.client, TRANSCRIPTIONS, wav[::-1]).json()["text"]
    assert len(other) == WORD * 6 and other != j["text"]
    long = audio(sim.client, TRANSCRIPTIONS, bytes(100_000)).json()
    assert long["usage"]["seconds"] == 4 and len(long["text"]) == WORD * 100
    assert len(audio(sim.client, TRANSCRIPTIONS, b"").json()["text"]) == WORD
    t = audio(sim.client, TRANSLATIONS, wav, {"language": "de"}).json()
    assert set(t) == {"text"} and len(t["text"]) == WORD * 6 and t["text"] != j["text"]
    assert len(audio(sim.client, TRANSCRIPTIONS, wav, {"max_completion_tokens": "2"}
                     ).json()["text"]) == WORD * 2
    assert len(audio(sim.client, TRANSCRIPTIONS, wav, headers={"x-sim": "tokens=3"}
                     ).json()["text"]) == WORD * 3


@pytest.mark.parametrize("path,obj", [(TRANSCRIPTIONS, "transcription.chunk"),
                                      (TRANSLATIONS, "translation.chunk")])
def test_audio_stream(procs, path, obj):
    sim = procs.sim(fast=True)
    wav = bytes(2500)  # 3 words
    whole = audio(sim.client, path, wav).json()["text"]
    with audio_stream(sim, path, wav, {"stream": "true", "stream_include_usage": "true"}) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        events = read_sse(r)
    assert events[-1].done
    chunks = [e.json() for e in events[:-1]]
    assert all(c["object"] == obj and c["model"] == "whisper" for c in chunks)
    assert chunks[0]["id"].startswith("trsc-" if obj.startswith("transcription") else "trsl-")
    words = [c["choices"][0] for c in chunks if c["choices"]]
    assert "".join(w["delta"]["content"] for w in words) == whole and len(words) == 3
    assert [w.get("finish_reason") for w in words] == [None, None, "stop"]
    usage = chunks[-1]
    assert usage["choices"] == [] and usage["usage"]["completion_tokens"] == 3
    assert usage["usage"]["total_tokens"] == usage["usage"]["prompt_tokens"] + 3


def audio_stream(sim, path, data, fields):
    return sim.client.stream("POST", path, files={"file": ("a.wav", data, "audio/wav")},
                             data=dict({"model": "whisper"}, **fields))


def test_audio_refusals_and_garbage(procs):
    """Bad forms are 400s in vLLM's shape; hostile multipart bodies (random
    bytes, cut short, huge headers, lying boundaries) too, and the node
    goes on serving."""
    sim = procs.sim(fast=True)
    wav = bytes(100)
    vllm_error(sim.client.post(TRANSCRIPTIONS, json={"model": "whisper"}), 400,
               "Content-Type must be multipart/form-data")
    vllm_error(sim.client.post(TRANSCRIPTIONS, data={"model": "whisper"},
                               files={"other": ("a.wav", wav)}), 400)
    for fields, message in (({"response_format": "srt"},
                             "Currently only support response_format `text` or `json`"),
                            ({"stream": "maybe"}, "stream must be a boolean"),
                            ({"stream_include_usage": "true"},
                             "Stream options can only be defined when `stream=True`."),
                            ({"max_completion_tokens": "two"},
                             "max_completion_tokens must be an integer")):
        vllm_error(audio(sim.client, TRANSCRIPTIONS, wav, fields), 400, message)
    good = audio(sim.client, TRANSCRIPTIONS, wav).request
    body = good.read()
    ctype = good.headers["content-type"]
    boundary = ctype.split("boundary=")[1].encode()
    rng = random.Random(7)
    bodies = [b"", b"--", b"--" + boundary, body[:len(body) // 2], body[:-3],
              body.replace(b"\r\n", b"\n"), body.replace(b"form-data", b"attachment"),
              b"--" + boundary + b"\r\nX: " + b"a" * 20000 + b"\r\n\r\nx\r\n--" + boundary + b"--",
              b"--" + boundary + b"\r\n" * 3 + (b"\r\n--" + boundary) * 40 + b"--"]
    bodies += [bytes(rng.randrange(256) for _ in range(rng.randrange(1, 400)))
               for _ in range(30)]
    for i in range(30):
        b = bytearray(body)
        for _ in range(4):
            b[rng.randrange(len(b))] = rng.choice(b"-\r\n:;=\"\x00\xff")
        bodies.append(bytes(b))
    statuses = set()
    for b in bodies:
        r = sim.client.post(TRANSCRIPTIONS, content=b, headers={"content-type": ctype})
        statuses.add(r.status_code)
        if r.status_code != 200:
            vllm_error(r, 400)
    assert 400 in statuses
    for ct in ("multipart/form-data", "multipart/form-data; boundary=", "text/plain",
               "multipart/form-data; boundary=" + "x" * 71):
        vllm_error(sim.client.post(TRANSCRIPTIONS, content=body, headers={"content-type": ct}),
                   400)
    # A model name that is not UTF-8 is echoed as valid JSON.
    weird = (b"--" + boundary + b"\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\n"
             b"m\xff\xfe\r\n--" + boundary + b"\r\nContent-Disposition: form-data; name=\"file\"; "
             b"filename=\"a\"\r\n\r\n" + wav + b"\r\n--" + boundary + b"--\r\n")
    r = sim.client.post(TRANSCRIPTIONS, content=weird, headers={"content-type": ctype,
                                                                 "x-sim": "delay_ms=1"})
    assert r.status_code == 200
    with audio_stream(sim, TRANSCRIPTIONS, wav, {"stream": "true"}) as s:
        pass
    st = sim.stats()
    assert st["running"] == 0 and st["endpoint_requests"][TRANSCRIPTIONS] >= len(bodies)
    assert audio(sim.client, TRANSCRIPTIONS, wav).status_code == 200


def test_models_by_id(procs):
    sim = procs.sim(fast=True, model="org/Model-7B")
    card = sim.client.get("/v1/models").json()["data"][0]
    for path in ("/v1/models/org/Model-7B", "/v1/models/org%2FModel-7B", "/v1/models/org%2fModel-7B?x=1"):
        r = sim.client.get(path)
        assert r.status_code == 200 and r.json() == card, path
    vllm_error(sim.client.get("/v1/models/nope"), 404, "The model `nope` does not exist.")
    vllm_error(sim.client.get("/v1/models/org%2Fother"), 404,
               "The model `org/other` does not exist.")
    vllm_error(sim.client.post("/v1/models/org/Model-7B"), 405)
    assert sim.stats()["endpoint_requests"]["/v1/models/{id}"] == 6


def test_every_endpoint_faults_and_counts(procs):
    """x-sim status, html_error, plain_error, delay_ms, drop_after=0 and hang
    work on every model endpoint; each is counted by path, and a bad body is
    a 400 in vLLM's shape."""
    sim = procs.sim(fast=True)
    for path, body in GOOD:
        r = send(sim.client, path, body)
        assert r.status_code == 200, (path, r.text)
        assert r.headers["content-type"].startswith("application/json"), path
        if "model" in r.json():
            assert r.json()["model"] == "m", path
        vllm_error(send(sim.client, path, body, {"x-sim": "status=429"}), 429)
        r = send(sim.client, path, body, {"x-sim": "html_error=502"})
        assert r.status_code == 502 and r.headers["content-type"] == "text/html", path
        assert "<h1>502 Bad Gateway</h1>" in r.text and "<title>502 Bad Gateway</title>" in r.text
        r = send(sim.client, path, body, {"x-sim": "plain_error=503"})
        assert r.status_code == 503 and r.headers["content-type"].startswith("text/plain")
        assert r.text == "503 Service Unavailable\n"
        t0 = time.monotonic()
        assert send(sim.client, path, body, {"x-sim": "delay_ms=150"}).status_code == 200
        assert time.monotonic() - t0 >= 0.14
        with pytest.raises(httpx.HTTPError):
            send(sim.client, path, body, {"x-sim": "drop_after=0"})
        with pytest.raises(httpx.ReadTimeout):
            send(sim.client, path, body, {"x-sim": "hang=1"}, timeout=0.2)
        if body is not None:
            vllm_error(sim.client.post(path, content=b"{"), 400)
            vllm_error(sim.client.post(path, json=["not an object"]), 400)
        vllm_error(sim.client.get(path), 405)
    st = sim.stats()
    assert all(st["endpoint_requests"][p] == 10 - (b is None) * 2 for p, b in GOOD), st
    assert st["requests_total"] == sum(st["endpoint_requests"][p] for p, _ in GOOD) - len(GOOD)
    assert st["dropped_total"] == len(GOOD)
    assert st["running"] == 0


def test_error_rate_and_die_after_cover_every_endpoint(procs):
    sim = procs.sim(fast=True, error_rate=1)
    for path, body in GOOD:
        vllm_error(send(sim.client, path, body), 500, "simulated error (--error-rate)")
    dying = procs.sim(fast=True, die_after=2)
    dying.expect_rc = 1
    assert send(dying.client, EMBEDDINGS, GOOD[3][1]).status_code == 200
    assert send(dying.client, TRANSCRIPTIONS, None).status_code == 200
    assert dying.wait(T(10)) == 1, dying.describe()
    dying.stopped = True


def test_pooled_requests_in_vllm_metrics(procs):
    """Embeddings, scores and the like count their prompt tokens and a
    finished request in vLLM's counters, as vLLM does; tokenizing does not."""
    sim = procs.sim(fast=True)

    def counters():
        text = sim.client.get("/metrics").text
        get = lambda name: float(re.search(r"^%s\{[^}]*\} (\S+)$" % re.escape(name), text,
                                           re.M).group(1))
        return (get("vllm:prompt_tokens_total"),
                float(re.search(r'^vllm:request_success_total\{[^}]*finished_reason="stop"[^}]*\} '
                                r'(\S+)$', text, re.M).group(1)))

    before = counters()
    j = sim.client.post(EMBEDDINGS, json={"input": ["abcd" * 10, "x"]}).json()
    sim.client.post("/tokenize", json={"prompt": "abcd" * 10})
    r = sim.client.post("/v1/rerank", json={"query": "q", "documents": ["a", "b"]}).json()
    after = counters()
    assert after[0] - before[0] == j["usage"]["prompt_tokens"] + r["usage"]["prompt_tokens"] == 15
    assert after[1] - before[1] == 2
