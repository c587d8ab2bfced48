"""
The access log (ACCESS_LOG): one JSON line per request with the fields
docs/OPERATIONS.md lists, for proxied requests (plain and streamed) and for
requests llmux answers itself, and no secrets or prompt text in it.
"""
import json

from conftest import T
from e2e_util import wait_for

SECRET = "s3cret-client-token"
API_KEY = "node-api-key-987"
PROMPT = "the-prompt-text-must-not-be-logged"


def read_lines(path, n):
    def enough():
        try:
            lines = path.read_text().splitlines()
        except FileNotFoundError:
            return None
        return lines if len(lines) >= n else None
    lines = wait_for(enough, timeout=T(10), what="%d access log lines" % n)
    return [json.loads(line) for line in lines]


def test_access_log_lines(procs, tmp_path):
    sim = procs.sim(fast=True)
    log = tmp_path / "access.log"
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps({"models": {"m": {"servers": [
        {"url": sim.url, "name": "n1", "api_key": API_KEY}]}}}))
    lx = procs.llmux(args=["--config", cfg, "--access-log", log],
                     env={"AUTH_TOKEN": SECRET})
    auth = {"Authorization": "Bearer " + SECRET}
    body = {"model": "m", "max_tokens": 3,
            "messages": [{"role": "user", "content": PROMPT}]}
    r = lx.client.post("/v1/chat/completions?api-version=1", json=body,
                       headers=dict(auth, **{"X-Request-Id": "req-one"}))
    assert r.status_code == 200, r.text
    plain_body = r.content
    r = lx.client.post("/v1/chat/completions", json=dict(body, stream=True), headers=auth)
    assert r.status_code == 200 and r.text.endswith("data: [DONE]\n\n")
    assert lx.client.post("/v1/chat/completions", json=body).status_code == 401
    assert lx.client.post("/v1/chat/completions?x=1", content=b"[1]",
                          headers=auth).status_code == 400

    plain, stream, unauth, bad = read_lines(log, 4)
    assert plain["request_id"] == "req-one"
    assert plain["path"] == "/v1/chat/completions"  # no query string
    assert plain["method"] == "POST" and plain["client"] == "127.0.0.1"
    assert plain["model"] == "m" and plain["node"] == "n1"
    assert plain["status"] == 200 and plain["stream"] is False and plain["retries"] == 0
    assert plain["completion_tokens"] == 3 and plain["prompt_tokens"] > 0
    assert plain["ttft_s"] is None and plain["total_s"] >= 0
    assert plain["bytes_in"] == len(json.dumps(body).encode())
    assert plain["bytes_out"] == len(plain_body)
    assert stream["stream"] is True and stream["ttft_s"] is not None
    assert stream["completion_tokens"] == 3  # counted although the client did not ask
    assert len(stream["request_id"]) == 32  # generated
    assert unauth["status"] == 401 and unauth["model"] == "" and unauth["node"] is None
    assert bad["status"] == 400 and bad["path"] == "/v1/chat/completions"
    text = log.read_text()
    for secret in (SECRET, API_KEY, PROMPT):
        assert secret not in text
    assert plain["error"] is None and unauth["error"] is None


def test_access_log_names_the_error_llmux_answered(procs, tmp_path, closed_port):
    """`error` carries the code of the error llmux answered with (the failure
    table's for a node that failed, the gateway's own otherwise)."""
    log = tmp_path / "access.log"
    lx = procs.llmux(["http://127.0.0.1:%d" % closed_port],
                     args=["--access-log", log], env={"MAX_RETRIES": "0"})
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    r = lx.client.post("/v1/chat/completions", json=body)
    assert r.status_code == 502, r.text
    code = r.json()["error"]["code"]
    [line] = read_lines(log, 1)
    assert line["status"] == 502 and line["error"] == code == "upstream_unreachable"
