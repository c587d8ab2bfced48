"""
The whole vLLM API through llmux: every model-bearing endpoint is routed by
its model to that model's pool (multipart audio by its form field), with
auth, retries and streaming; GET /v1/models/{id}; a node's errors reach the
client in OpenAI's shape; and the official `openai` npm SDK reads them.
"""
import json
import os
import shutil
import subprocess
from pathlib import Path

import httpx
import pytest

from conftest import T
from e2e_util import read_sse

TOKEN = "api-test-token"
AUTH = {"Authorization": "Bearer " + TOKEN}
ROOT = Path(__file__).resolve().parents[2]

# endpoint path -> (pool, body): each body a valid request for llmux-sim.
JSON_CALLS = {
    "/v1/embeddings": ("embed-m", {"input": "hello there"}),
    "/v1/rerank": ("embed-m", {"query": "q", "documents": ["a", "b"]}),
    "/rerank": ("embed-m", {"query": "q", "documents": ["a", "b"]}),
    "/v2/rerank": ("embed-m", {"query": "q", "documents": ["a", "b"]}),
    "/v1/score": ("embed-m", {"text_1": "a", "text_2": "b"}),
    "/score": ("embed-m", {"text_1": "a", "text_2": ["b", "c"]}),
    "/pooling": ("embed-m", {"input": "x"}),
    "/classify": ("embed-m", {"input": "x"}),
    "/v1/responses": ("chat-m", {"input": "hi there", "max_output_tokens": 4}),
    "/tokenize": ("chat-m", {"prompt": "hello world"}),
    "/detokenize": ("chat-m", {"tokens": [1819043176, 1870078063, 6581362]}),
    "/v1/chat/completions": ("chat-m", {"messages": [{"role": "user", "content": "hi"}],
                                        "max_tokens": 3}),
    "/v1/completions": ("chat-m", {"prompt": "once", "max_tokens": 3}),
}


def form(fields, file_bytes=b"RIFF....WAVEfmt " * 200, boundary="llmuxboundary42"):
    """A multipart/form-data body with <fields> and an audio file."""
    out = b""
    for k, v in fields.items():
        out += (b"--%s\r\nContent-Disposition: form-data; name=\"%s\"\r\n\r\n%s\r\n"
                % (boundary.encode(), k.encode(), v.encode()))
    out += (b"--%s\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.wav\"\r\n"
            b"Content-Type: audio/wav\r\n\r\n" % boundary.encode()) + file_bytes + b"\r\n"
    out += b"--%s--\r\n" % boundary.encode()
    return out, {"Content-Type": "multipart/form-data; boundary=" + boundary}


@pytest.fixture
def fleet(procs, tmp_path):
    """Two pools: chat-m on two nodes, embed-m on one."""
    chat = [procs.sim(fast=True, model="chat-m") for _ in range(2)]
    embed = [procs.sim(fast=True, model="embed-m")]
    cfg = tmp_path / "pools.json"
    cfg.write_text(json.dumps({"models": {
        "chat-m": {"servers": [s.url for s in chat], "strategy": "round_robin"},
        "embed-m": {"servers": [s.url for s in embed]}}}))
    lx = procs.llmux(args=["--config", cfg], env={"AUTH_TOKEN": TOKEN})
    return lx, {"chat-m": chat, "embed-m": embed}


def endpoint_count(sims, path):
    return sum(s.stats().get("endpoint_requests", {}).get(path, 0) for s in sims)


@pytest.mark.parametrize("path", sorted(JSON_CALLS))
def test_every_endpoint_goes_to_its_models_pool(fleet, path):
    lx, pools = fleet
    pool, body = JSON_CALLS[path]
    r = lx.client.post(path, json=dict(body, model=pool), headers=AUTH)
    assert r.status_code == 200, r.text
    assert r.headers["x-routed-node"] in {s.url for s in pools[pool]}
    assert r.headers["x-request-id"]
    other = [s for name, sims in pools.items() if name != pool for s in sims]
    assert endpoint_count(pools[pool], path) == 1
    assert endpoint_count(other, path) == 0
    # No token: 401; an unknown model: 404 naming it, in OpenAI's shape.
    assert lx.client.post(path, json=dict(body, model=pool)).status_code == 401
    r = lx.client.post(path, json=dict(body, model="no-such-model"), headers=AUTH)
    assert r.status_code == 404
    assert r.json()["error"]["code"] == "model_not_found"
    assert "no-such-model" in r.json()["error"]["message"]


def test_tokenize_without_a_model_uses_the_only_pool(procs, tmp_path):
    """vLLM's /tokenize and /detokenize need no model: with one pool, that
    pool; other endpoints still need one (no catch-all pool here)."""
    sim = procs.sim(fast=True, model="only-m")
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps({"models": {"only-m": {"servers": [sim.url]}}}))
    lx = procs.llmux(args=["--config", cfg])
    r = lx.client.post("/tokenize", json={"prompt": "hello world"})
    assert r.status_code == 200, r.text
    assert r.json()["count"] == 3
    r = lx.client.post("/v1/embeddings", json={"input": "x"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "missing_model"


def test_responses_api_streams_its_typed_events(fleet):
    lx, pools = fleet
    body = {"model": "chat-m", "input": "stream me", "max_output_tokens": 5, "stream": True}
    with lx.client.stream("POST", "/v1/responses", json=body, headers=AUTH) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        events = read_sse(r)
    kinds = [e.json()["type"] for e in events]
    assert kinds[0] == "response.created" and kinds[-1] == "response.completed", kinds
    assert kinds.count("response.output_text.delta") == 5
    assert not any(e.done for e in events)  # the Responses API has no [DONE]
    # Typed events keep their "event:" lines, and llmux adds nothing.
    assert all(e.raw.startswith(b"event: " + e.json()["type"].encode()) for e in events)
    text = "".join(e.json()["delta"] for e in events if e.json()["type"] == "response.output_text.delta")
    plain = lx.client.post("/v1/responses", json=dict(body, stream=False), headers=AUTH).json()
    assert plain["output"][0]["content"][0]["text"] == text
    # llmux counted its tokens (usage.input_tokens / output_tokens).
    assert plain["usage"]["output_tokens"] == 5


@pytest.mark.parametrize("path", ["/v1/audio/transcriptions", "/v1/audio/translations"])
def test_audio_is_routed_by_its_form_field(fleet, path):
    lx, pools = fleet
    body, headers = form({"model": "embed-m", "response_format": "json"})
    r = lx.client.post(path, content=body, headers=dict(headers, **AUTH))
    assert r.status_code == 200, r.text
    assert r.json()["text"]
    assert r.headers["x-routed-node"] == pools["embed-m"][0].url
    assert endpoint_count(pools["embed-m"], path) == 1
    # Streamed.
    body, headers = form({"model": "chat-m", "stream": "true"})
    with lx.client.stream("POST", path, content=body, headers=dict(headers, **AUTH)) as r:
        assert r.status_code == 200
        events = read_sse(r)
    assert events[-1].done and len(events) >= 2
    assert endpoint_count(pools["chat-m"], path) == 1
    # An unknown model, no model, and a body that is no form.
    body, headers = form({"model": "nope"})
    r = lx.client.post(path, content=body, headers=dict(headers, **AUTH))
    assert r.status_code == 404 and "nope" in r.json()["error"]["message"]
    body, headers = form({"language": "en"})
    r = lx.client.post(path, content=body, headers=dict(headers, **AUTH))
    assert r.status_code == 400 and r.json()["error"]["code"] == "missing_model"
    for garbage, ctype in ((b"--x\r\nnot a form", "multipart/form-data; boundary=x"),
                           (b'{"model":"chat-m"}', "application/json"),
                           (b"\xff" * 100, "multipart/form-data")):
        r = lx.client.post(path, content=garbage, headers=dict(AUTH, **{"Content-Type": ctype}))
        assert r.status_code == 400, (garbage, r.text)
        assert r.json()["error"]["code"] == "invalid_form"


def test_multipart_upstream_model_is_rewritten(procs, tmp_path):
    """A pool's upstream_model replaces the form's model field too."""
    node = procs.pynode()
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps({"models": {"whisper": {
        "servers": [node.url], "upstream_model": "openai/whisper-large-v3"}}}))
    lx = procs.llmux(args=["--config", cfg])
    body, headers = form({"model": "whisper", "language": "en"})
    r = lx.client.post("/v1/audio/transcriptions", content=body, headers=headers)
    assert r.status_code == 200, r.text
    sent = node.posts[-1].body
    assert b'name="model"\r\n\r\nopenai/whisper-large-v3\r\n' in sent
    assert sent.replace(b"openai/whisper-large-v3", b"whisper") == body


def test_models_by_id(fleet):
    lx, _ = fleet
    r = lx.client.get("/v1/models/chat-m", headers=AUTH)
    assert r.status_code == 200, r.text
    assert r.json()["id"] == "chat-m" and r.json()["object"] == "model"
    r = lx.client.get("/v1/models/missing", headers=AUTH)
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
    assert lx.client.get("/v1/models/chat-m").status_code == 401
    assert lx.client.get("/v1/models/%zz", headers=AUTH).status_code == 404
    ids = {m["id"] for m in lx.client.get("/v1/models", headers=AUTH).json()["data"]}
    assert ids == {"chat-m", "embed-m"}


def test_unknown_paths_are_404_naming_the_path(fleet):
    lx, _ = fleet
    r = lx.client.post("/v1/nothing/here?x=1", json={}, headers=AUTH)
    assert r.status_code == 404
    assert r.json()["error"]["message"] == "no such endpoint: POST /v1/nothing/here"
    r = lx.client.get("/v1/embeddings", headers=AUTH)
    assert r.status_code == 405


@pytest.mark.parametrize("path", ["/v1/embeddings", "/v1/rerank", "/v1/responses", "/tokenize",
                                  "/v1/audio/transcriptions"])
def test_a_failing_node_is_retried_on_any_endpoint(procs, tmp_path, path):
    bad = procs.sim(fast=True, model="m", error_rate=1)
    good = procs.sim(fast=True, model="m")
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps({"models": {"m": {"servers": [bad.url, good.url],
                                                "strategy": "round_robin"}}}))
    lx = procs.llmux(args=["--config", cfg], env={"EJECT_COOLDOWN_SECONDS": "0"})
    for _ in range(4):
        if path.startswith("/v1/audio"):
            body, headers = form({"model": "m"})
            r = lx.client.post(path, content=body, headers=headers)
        else:
            pool, body = JSON_CALLS.get(path, ("m", {"input": "x"}))
            r = lx.client.post(path, json=dict(body, model="m"), headers={})
        assert r.status_code == 200, r.text
        assert r.headers["x-routed-node"] == good.url
    assert endpoint_count([bad], path) >= 1  # round robin sent some there first


def test_node_errors_reach_the_client_in_openai_shape(procs, tmp_path):
    """vLLM's top-level error fields, an HTML page and plain text from a
    proxy in front of a node: each reaches the client as {"error": {...}}
    with the node's message and status."""
    sim = procs.sim(fast=True, model="m", max_model_len=64)
    lx = procs.llmux([sim], env={"MAX_RETRIES": "0"})
    long_prompt = {"model": "m", "messages": [{"role": "user", "content": "word " * 100}]}
    direct = sim.client.post("/v1/chat/completions", json=long_prompt)
    assert direct.status_code == 400 and "message" in direct.json()
    r = lx.client.post("/v1/chat/completions", json=long_prompt)
    assert r.status_code == 400
    assert r.json()["error"]["message"] == direct.json()["message"]
    assert "maximum context length" in r.json()["error"]["message"]
    assert r.json()["error"]["type"] == direct.json()["type"]
    for fault, status, words in (("html_error=502", 502, "502 Bad Gateway"),
                                 ("plain_error=503", 503, "503 Service Unavailable")):
        r = lx.client.post("/v1/embeddings", json={"model": "m", "input": "x"},
                           headers={"x-sim": fault})
        assert r.status_code == status, r.text
        assert r.headers["content-type"] == "application/json"
        err = r.json()["error"]
        assert words in err["message"] and "<" not in err["message"], err
        assert err["type"] == "server_error" and err["code"] == status
    # Already in OpenAI's shape: unchanged, byte for byte.
    mine = b'{"error":{"message":"as is","code":"mine"}} '
    node = procs.pynode(lambda conn, req: conn.send(
        b"HTTP/1.1 400 Bad Request\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (len(mine), mine)) or True)
    lx2 = procs.llmux([node])
    r = lx2.client.post("/v1/chat/completions", json={"model": "m", "messages": []})
    assert r.status_code == 400 and r.content == mine


# ---- the official openai npm SDK -------------------------------------------------

SDK_VERSION = "4.95.0"  # the last line that runs on Debian 12's Node 18


@pytest.fixture(scope="session")
def openai_sdk():
    """node and the openai package (npm, cached under build/npm)."""
    if not shutil.which("node") or not shutil.which("npm"):
        if os.geteuid() == 0 and shutil.which("apt-get") and not os.environ.get("LLMUX_E2E_NO_INSTALL"):
            subprocess.run(["apt-get", "install", "-y", "-q", "nodejs", "npm"],
                           stdin=subprocess.DEVNULL, capture_output=True, timeout=600,
                           env=dict(os.environ, DEBIAN_FRONTEND="noninteractive"))
    if not shutil.which("node") or not shutil.which("npm"):
        pytest.skip("node and npm are not installed (apt-get install nodejs npm)")
    prefix = ROOT / "build" / "npm"
    if not (prefix / "node_modules" / "openai" / "package.json").exists():
        prefix.mkdir(parents=True, exist_ok=True)
        r = subprocess.run(["npm", "install", "--prefix", str(prefix), "--no-audit", "--no-fund",
                            "openai@" + SDK_VERSION], capture_output=True, timeout=600)
        if r.returncode != 0:
            pytest.skip("npm install openai@%s failed: %s" % (SDK_VERSION, r.stderr[-500:]))
    return prefix


def run_sdk(prefix, base_url, script):
    """Runs <script> (an async function body; `client` is an OpenAI client)
    with node; returns what it prints as JSON."""
    src = ("const OpenAI = require('openai');\n"
           "const client = new OpenAI({baseURL: process.env.LLMUX_URL, apiKey: 'k', maxRetries: 0});\n"
           "(async () => {\n%s\n})().catch(e => { console.log(JSON.stringify("
           "{thrown: String(e), cause: String(e.cause), status: e.status, message: e.message, error: e.error})); });\n"
           % script)
    r = subprocess.run(["node", "-e", src], capture_output=True, timeout=T(60),
                       env=dict(os.environ, NODE_PATH=str(prefix / "node_modules"),
                                LLMUX_URL=base_url + "/v1"))
    assert r.returncode == 0, r.stderr.decode()[-2000:]
    return json.loads(r.stdout.decode().strip().splitlines()[-1])


def test_openai_sdk_models_retrieve_and_embeddings(procs, tmp_path, openai_sdk):
    chat = procs.sim(fast=True, model="chat-m")
    embed = procs.sim(fast=True, model="embed-m", max_model_len=64)
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps({"models": {"chat-m": {"servers": [chat.url]},
                                          "embed-m": {"servers": [embed.url]}}}))
    lx = procs.llmux(args=["--config", cfg], env={"MAX_RETRIES": "0"})
    got = run_sdk(openai_sdk, lx.url, "const m = await client.models.retrieve('chat-m');\n"
                                      "console.log(JSON.stringify(m));")
    assert got.get("id") == "chat-m" and got.get("object") == "model", got
    got = run_sdk(openai_sdk, lx.url,
                  "const e = await client.embeddings.create({model: 'embed-m', input: 'hi'});\n"
                  "console.log(JSON.stringify({n: e.data.length, dim: e.data[0].embedding.length,"
                  " usage: e.usage}));")
    assert got["n"] == 1 and got["dim"] > 0 and got["usage"]["prompt_tokens"] > 0, got
    # A node's errors reach the SDK with the node's message: a context-length
    # 400 and a 500.
    got = run_sdk(openai_sdk, lx.url,
                  "await client.chat.completions.create({model: 'embed-m', messages: "
                  "[{role: 'user', content: 'word '.repeat(100)}]});")
    assert got["status"] == 400, got
    assert "maximum context length" in got["message"], got
    bad = procs.sim(fast=True, model="m", error_rate=1)
    lx2 = procs.llmux([bad], env={"MAX_RETRIES": "0"})
    got = run_sdk(openai_sdk, lx2.url,
                  "await client.embeddings.create({model: 'm', input: 'x'});")
    assert got["status"] == 500 and "simulated error" in got["message"], got
    got = run_sdk(openai_sdk, lx.url, "await client.models.retrieve('nope');")
    assert got["status"] == 404 and "nope" in got["message"], got
