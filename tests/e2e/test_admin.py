"""
The admin API (docs/ADMIN.md): ADMIN_TOKEN auth, GET/POST /admin/models,
PUT/DELETE /admin/models/{name}, POST /admin/nodes/{name}/drain|enable,
persistence to the config file, and safety under concurrent admin calls and
traffic.
"""
import json
import os
import signal
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import quote

import pytest

from conftest import T, bin_path, clean_env
from e2e_util import (RawConn, assert_openai_error, chat_body, raw_request, read_sse,
                      wait_for)

TOKEN = "adm-7f3c-secret"
AUTH = {"Authorization": "Bearer " + TOKEN}
CHAT = "/v1/chat/completions"


def write_config(path, models, **settings):
    obj = dict(settings)
    obj["models"] = models
    path.write_text(json.dumps(obj, indent=2))
    return path


def start_with_config(procs, tmp_path, models, token=TOKEN, args=(), **settings):
    cfg = write_config(tmp_path / "llmux.json", models, **settings)
    argv = ["--config", str(cfg)] + (["--admin-token", token] if token else []) + list(args)
    return procs.llmux(args=argv), cfg


def chat(client, model, **kw):
    return client.post(CHAT, json=chat_body(model=model, max_tokens=4), **kw)


def admin(lx, method, path, **kw):
    headers = dict(AUTH)
    headers.update(kw.pop("headers", {}))
    return lx.client.request(method, path, headers=headers, **kw)


def pools(lx):
    r = admin(lx, "GET", "/admin/models")
    assert r.status_code == 200, r.text
    return {p["model"]: p for p in r.json()["models"]}


def check_error(r, status, code=None):
    assert r.status_code == status, r.text
    err = assert_openai_error(r.json())
    assert r.headers.get("x-request-id"), r.headers
    if code:
        assert err["code"] == code, err
    return err


# ---- auth ------------------------------------------------------------------

@pytest.mark.parametrize("path,method", [("/admin/models", "GET"), ("/admin/models", "POST"),
                                         ("/admin/models/m", "DELETE"),
                                         ("/admin/nodes/n/drain", "POST"),
                                         ("/admin/anything", "GET")])
def test_admin_is_disabled_without_admin_token(procs, path, method):
    sim = procs.sim(fast=True)
    lx = procs.llmux([sim], args=["--auth-token", "client-token"])
    for headers in ({}, AUTH, {"Authorization": "Bearer client-token"}):
        r = lx.client.request(method, path, headers=headers, json={})
        check_error(r, 403, "admin_disabled")
    # Clients are still served.
    r = chat(lx.client, "sim-model", headers={"Authorization": "Bearer client-token"})
    assert r.status_code == 200, r.text


def test_wrong_or_missing_admin_token_is_401(procs):
    sim = procs.sim(fast=True)
    lx = procs.llmux([sim], args=["--auth-token", "client-token"], env={"ADMIN_TOKEN": TOKEN})
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Bearer"},
                    {"Authorization": "Bearer " + TOKEN + "x"},
                    {"Authorization": "Basic " + TOKEN}, {"Authorization": TOKEN},
                    {"Authorization": "Bearer client-token"}):
        for method, path in (("GET", "/admin/models"), ("POST", "/admin/nodes/x/drain"),
                             ("GET", "/admin/nope")):
            r = lx.client.request(method, path, headers=headers)
            check_error(r, 401, "invalid_api_key")
            assert r.headers.get("www-authenticate") == "Bearer"
    # The right one (from ADMIN_TOKEN), with any case of the scheme.
    r = lx.client.get("/admin/models", headers={"Authorization": "bearer " + TOKEN})
    assert r.status_code == 200, r.text
    assert r.headers["x-request-id"]


# ---- GET -------------------------------------------------------------------

def test_get_lists_every_pool_with_config_and_live_state(procs, tmp_path):
    s1, s2 = procs.sim(fast=True), procs.sim(fast=True)
    lx, _ = start_with_config(procs, tmp_path, {
        "gpt-4": {"servers": [s1.url, {"url": s2.url, "name": "n2", "weight": 3,
                                       "max_concurrency": 7, "api_key": "sk-very-secret"}],
                  "strategy": "least_connection", "upstream_model": "mistral-7b",
                  "metrics_update_interval": 5},
        "org/small": {"servers": [s2.url]},
    }, strategy="random")
    r = admin(lx, "GET", "/admin/models")
    assert r.status_code == 200, r.text
    assert "sk-very-secret" not in r.text
    body = r.json()
    assert body["persistent"] is True and body["config_path"].endswith("llmux.json")
    got = {p["model"]: p for p in body["models"]}
    assert list(got) == ["gpt-4", "org/small"]
    p = got["gpt-4"]
    assert p["strategy"] == "least_loaded"  # canonical name of least_connection
    assert p["upstream_model"] == "mistral-7b"
    assert p["metrics_update_interval"] == 5
    a, b = p["servers"]
    assert a == {"url": s1.url, "name": s1.url, "weight": 1, "max_concurrency": 0,
                 "api_key": None, "healthy": True, "state": "healthy", "drained": False,
                 "in_flight": 0, "requests_total": 0}
    assert (b["url"], b["name"], b["weight"], b["max_concurrency"], b["api_key"]) == \
        (s2.url, "n2", 3, 7, "***")
    small = got["org/small"]
    assert small["strategy"] == "random"  # the ROUTING_STRATEGY default
    assert small["upstream_model"] is None
    # Live state follows traffic.
    assert chat(lx.client, "org/small").status_code == 200
    assert pools(lx)["org/small"]["servers"][0]["requests_total"] == 1
    # One pool by name (URL-encoded).
    r = admin(lx, "GET", "/admin/models/" + quote("org/small", safe=""))
    assert r.status_code == 200 and r.json()["model"] == "org/small", r.text
    check_error(admin(lx, "GET", "/admin/models/none"), 404, "model_not_found")


def test_wrong_method_and_unknown_admin_path(procs):
    sim = procs.sim(fast=True)
    lx = procs.llmux([sim], args=["--admin-token", TOKEN])
    r = admin(lx, "DELETE", "/admin/models")
    check_error(r, 405, "method_not_allowed")
    assert r.headers["allow"] == "GET, POST"
    r = admin(lx, "GET", "/admin/nodes/x/drain")
    check_error(r, 405)
    assert r.headers["allow"] == "POST"
    check_error(admin(lx, "GET", "/admin/nodes/x"), 404, "not_found")
    check_error(admin(lx, "GET", "/admin/other"), 404, "not_found")
    # Bad percent-encoding (httpx would re-encode it: a raw request).
    for target in ("/admin/models/%zz", "/admin/models/a%2", "/admin/models/a%00b",
                   "/admin/nodes//drain"):
        conn = RawConn(lx.port, timeout=T(10))
        try:
            conn.send(raw_request("PUT" if "models" in target else "POST", target, b"{}",
                                  headers=[("Authorization", AUTH["Authorization"])]))
            resp = conn.read_response()
        finally:
            conn.close()
        assert resp.status == 400, (target, resp)
        assert assert_openai_error(resp.json())["code"] == "invalid_name"


# ---- POST ------------------------------------------------------------------

def test_post_adds_a_pool_that_serves_requests(procs, tmp_path):
    s1, s2 = procs.sim(fast=True), procs.sim(fast=True)
    lx, _ = start_with_config(procs, tmp_path, {"base": {"servers": [s1.url]}})
    check_error(chat(lx.client, "added"), 404, "model_not_found")
    r = admin(lx, "POST", "/admin/models", json={
        "model_name": "added", "servers": [{"url": s2.url, "name": "node-two"}],
        "strategy": "least_connection"})
    assert r.status_code == 201, r.text
    p = r.json()
    assert p["model"] == "added" and p["strategy"] == "least_loaded"
    assert p["servers"][0]["name"] == "node-two" and p["persisted"] is True
    before = s2.stats()["requests_total"]
    for _ in range(3):
        r = chat(lx.client, "added")
        assert r.status_code == 200, r.text
        assert r.headers["x-routed-node"] == "node-two"
    assert s2.stats()["requests_total"] == before + 3
    assert "added" in [m["id"] for m in lx.client.get("/v1/models").json()["data"]]
    assert set(pools(lx)) == {"base", "added"}
    # The old pool is untouched.
    r = chat(lx.client, "base")
    assert r.status_code == 200 and r.headers["x-routed-node"] == s1.url


@pytest.mark.parametrize("extra,needle", [
    ({"servers": [{"url": "URL", "weight": 0}]}, "servers[0].weight"),
    ({"servers": ["URL", {"url": "URL", "max_concurrency": -1}]}, "servers[1].max_concurrency"),
    ({"servers": []}, "servers"),
    ({"servers": ["ftp://x:1"]}, "servers[0]"),
    ({"servers": ["URL"], "strategy": "fastest"}, "strategy"),
    ({"servers": ["URL"], "bogus": 1}, "bogus"),
    ({"servers": ["URL"], "metrics_update_interval": "10"}, "metrics_update_interval"),
    ({"servers": ["URL"], "upstream_model": 5}, "upstream_model"),
    ({"strategy": "random"}, "servers"),
    ({"servers": ["URL"], "model_name": None}, "model_name"),
    ({"servers": ["URL"], "model_name": 12}, "model_name"),
    ({"servers": ["URL"], "model_name": ""}, "model name"),
])
def test_post_refuses_bad_input_naming_the_field(procs, tmp_path, extra, needle):
    sim = procs.sim(fast=True)
    lx, cfg = start_with_config(procs, tmp_path, {"base": {"servers": [sim.url]}})
    before = cfg.read_text()
    obj = {"model_name": "new"}
    obj.update(json.loads(json.dumps(extra).replace('"URL"', json.dumps(sim.url))))
    if obj.get("model_name") is None:
        del obj["model_name"]
    r = admin(lx, "POST", "/admin/models", json=obj)
    err = check_error(r, 400, "invalid_pool")
    assert needle in err["message"], err
    assert set(pools(lx)) == {"base"}
    assert cfg.read_text() == before


@pytest.mark.parametrize("body", [b"", b"not json", b"[1, 2]", b'"x"', b'{"model_name": "a",',
                                  b'{"model_name": "a", "model_name": "b"}'])
def test_post_refuses_a_body_that_is_not_one_json_object(procs, body):
    sim = procs.sim(fast=True)
    lx = procs.llmux([sim], args=["--admin-token", TOKEN])
    r = admin(lx, "POST", "/admin/models", content=body,
              headers={"Content-Type": "application/json"})
    check_error(r, 400, "invalid_json")


def test_post_existing_model_is_409(procs, tmp_path):
    sim = procs.sim(fast=True)
    lx, cfg = start_with_config(procs, tmp_path, {"base": {"servers": [sim.url]}})
    before = cfg.read_text()
    r = admin(lx, "POST", "/admin/models", json={"model_name": "base", "servers": [sim.url]})
    check_error(r, 409, "model_exists")
    assert cfg.read_text() == before


# ---- PUT -------------------------------------------------------------------

def test_put_changes_servers_and_traffic_moves(procs, tmp_path):
    s1, s2 = procs.sim(fast=True), procs.sim(fast=True)
    lx, _ = start_with_config(procs, tmp_path, {
        "m": {"servers": [{"url": s1.url, "name": "a"}], "strategy": "round_robin",
              "upstream_model": "up-1"},
        "other": {"servers": [s1.url]}})
    assert chat(lx.client, "m").headers["x-routed-node"] == "a"
    r = admin(lx, "PUT", "/admin/models/m", json={"servers": [{"url": s2.url, "name": "b"}]})
    assert r.status_code == 200, r.text
    p = r.json()
    # Only the servers changed.
    assert [s["name"] for s in p["servers"]] == ["b"]
    assert p["strategy"] == "round_robin" and p["upstream_model"] == "up-1"
    n1, n2 = s1.stats()["requests_total"], s2.stats()["requests_total"]
    for _ in range(4):
        r = chat(lx.client, "m")
        assert r.status_code == 200, r.text
        assert r.headers["x-routed-node"] == "b"
        assert r.json()["model"] == "up-1"  # upstream_model still applied
    assert s1.stats()["requests_total"] == n1
    assert s2.stats()["requests_total"] == n2 + 4
    # A partial update of another field keeps the servers.
    r = admin(lx, "PUT", "/admin/models/m", json={"strategy": "random", "upstream_model": None})
    assert r.status_code == 200, r.text
    p = pools(lx)["m"]
    assert p["strategy"] == "random" and p["upstream_model"] is None
    assert [s["name"] for s in p["servers"]] == ["b"]
    assert chat(lx.client, "m").json()["model"] == "m"
    # Invalid changes are refused and change nothing.
    err = check_error(admin(lx, "PUT", "/admin/models/m",
                            json={"servers": [{"url": s1.url, "weight": 0}]}), 400)
    assert "servers[0].weight" in err["message"]
    check_error(admin(lx, "PUT", "/admin/models/m", json={"model_name": "renamed"}), 400)
    assert [s["name"] for s in pools(lx)["m"]["servers"]] == ["b"]


def test_a_pools_hedge_delay_is_shown_changed_and_written(procs, tmp_path):
    sim = procs.sim(fast=True)
    lx, cfg = start_with_config(procs, tmp_path, {
        "own": {"servers": [sim.url], "hedge_after_seconds": 0.5},
        "global": {"servers": [sim.url]},
    }, hedge_after_seconds=2)
    got = pools(lx)
    assert got["own"]["hedge_after_seconds"] == 0.5
    assert got["global"]["hedge_after_seconds"] is None  # HEDGE_AFTER_SECONDS applies
    r = admin(lx, "PUT", "/admin/models/global", json={"hedge_after_seconds": 0})
    assert r.status_code == 200, r.text
    assert r.json()["hedge_after_seconds"] == 0
    assert json.loads(cfg.read_text())["models"]["global"] == {
        "servers": [sim.url], "hedge_after_seconds": 0}
    # Changing another key keeps it; null gives the pool the global one back.
    r = admin(lx, "PUT", "/admin/models/global", json={"strategy": "random"})
    assert r.status_code == 200 and r.json()["hedge_after_seconds"] == 0, r.text
    r = admin(lx, "PUT", "/admin/models/own", json={"hedge_after_seconds": None})
    assert r.status_code == 200 and r.json()["hedge_after_seconds"] is None, r.text
    err = check_error(admin(lx, "PUT", "/admin/models/own", json={"hedge_after_seconds": -1}),
                      400, "invalid_pool")
    assert "hedge_after_seconds" in err["message"], err
    assert pools(lx)["own"]["hedge_after_seconds"] is None
    assert chat(lx.client, "own").status_code == 200


def test_put_and_delete_unknown_model_are_404(procs, tmp_path):
    sim = procs.sim(fast=True)
    lx, cfg = start_with_config(procs, tmp_path, {"base": {"servers": [sim.url]}})
    before = cfg.read_text()
    check_error(admin(lx, "PUT", "/admin/models/nope", json={"servers": [sim.url]}), 404,
                "model_not_found")
    check_error(admin(lx, "DELETE", "/admin/models/nope"), 404, "model_not_found")
    check_error(admin(lx, "POST", "/admin/nodes/nope/drain"), 404, "node_not_found")
    check_error(admin(lx, "POST", "/admin/nodes/nope/enable"), 404, "node_not_found")
    assert cfg.read_text() == before


def test_names_in_the_path_are_url_decoded(procs, tmp_path):
    s1, s2 = procs.sim(fast=True), procs.sim(fast=True)
    name = "mistralai/Mistral-7B v0.3+x"
    lx, _ = start_with_config(procs, tmp_path, {name: {"servers": [s1.url]},
                                                "keep": {"servers": [s1.url]}})
    r = admin(lx, "PUT", "/admin/models/" + quote(name, safe=""), json={"servers": [s2.url]})
    assert r.status_code == 200, r.text
    assert chat(lx.client, name).headers["x-routed-node"] == s2.url
    # A node named by its URL (the default name), URL-encoded.
    r = admin(lx, "POST", "/admin/nodes/%s/drain" % quote(s2.url, safe=""))
    assert r.status_code == 200, r.text
    assert r.json()["nodes"] == [{"model": name, "url": s2.url, "in_flight": 0}]
    r = admin(lx, "POST", "/admin/nodes/%s/enable" % quote(s2.url, safe=""))
    assert r.status_code == 200, r.text
    r = admin(lx, "DELETE", "/admin/models/" + quote(name, safe=""))
    assert r.status_code == 200 and r.json()["deleted"] == name, r.text
    assert set(pools(lx)) == {"keep"}


# ---- DELETE ----------------------------------------------------------------

def test_delete_makes_the_model_unknown_to_clients(procs, tmp_path):
    s1 = procs.sim(fast=True)
    lx, _ = start_with_config(procs, tmp_path, {"gone": {"servers": [s1.url]},
                                                "stays": {"servers": [s1.url]}})
    assert chat(lx.client, "gone").status_code == 200
    r = admin(lx, "DELETE", "/admin/models/gone")
    assert r.status_code == 200, r.text
    assert r.json() == {"deleted": "gone", "persisted": True}
    check_error(chat(lx.client, "gone"), 404, "model_not_found")
    assert [m["id"] for m in lx.client.get("/v1/models").json()["data"]] == ["stays"]
    assert chat(lx.client, "stays").status_code == 200
    # The last pool cannot go: llmux would not start with none.
    check_error(admin(lx, "DELETE", "/admin/models/stays"), 409, "last_model")
    assert chat(lx.client, "stays").status_code == 200


# ---- drain / enable --------------------------------------------------------

def test_drain_stops_new_requests_and_lets_a_stream_finish(procs, tmp_path):
    sa = procs.sim(decode_ms=25)
    sb = procs.sim(fast=True)
    lx, _ = start_with_config(procs, tmp_path, {"m": {
        "servers": [{"url": sa.url, "name": "a"}, {"url": sb.url, "name": "b"}],
        "strategy": "round_robin"}})
    n_tokens = 60
    body = chat_body(model="m", stream=True, max_tokens=n_tokens)
    streamer = lx.new_client()
    stream_cm = None
    try:
        # Open streams until one runs on "a" (round robin: within two tries).
        for _ in range(4):
            cm = streamer.stream("POST", CHAT, json=body, headers={"x-sim": "tokens=%d" % n_tokens})
            r = cm.__enter__()
            assert r.status_code == 200
            if r.headers["x-routed-node"] == "a":
                stream_cm, stream = cm, r
                break
            cm.__exit__(None, None, None)
        assert stream_cm is not None, "no stream was routed to node a"

        d = admin(lx, "POST", "/admin/nodes/a/drain")
        assert d.status_code == 200, d.text
        assert d.json()["drained"] is True
        assert d.json()["nodes"][0]["model"] == "m"
        assert d.json()["nodes"][0]["in_flight"] == 1  # the stream
        st = {s["name"]: s for s in pools(lx)["m"]["servers"]}
        assert st["a"]["drained"] is True and st["a"]["state"] == "drained"
        assert st["a"]["in_flight"] == 1

        for _ in range(10):
            r = chat(lx.client, "m")
            assert r.status_code == 200, r.text
            assert r.headers["x-routed-node"] == "b"

        events = read_sse(stream)
        assert events and events[-1].done, events[-3:]
        texts = [e for e in events[:-1]
                 if e.json()["choices"] and e.json()["choices"][0]["delta"].get("content")]
        assert len(texts) == n_tokens
    finally:
        if stream_cm is not None:
            stream_cm.__exit__(None, None, None)
        streamer.close()

    r = admin(lx, "POST", "/admin/nodes/a/enable")
    assert r.status_code == 200 and r.json()["drained"] is False, r.text
    routed = {chat(lx.client, "m").headers["x-routed-node"] for _ in range(6)}
    assert routed == {"a", "b"}


def test_drain_applies_to_the_name_in_every_pool_and_survives_pool_changes(procs, tmp_path):
    s1, s2 = procs.sim(fast=True), procs.sim(fast=True)
    lx, _ = start_with_config(procs, tmp_path, {
        "x": {"servers": [{"url": s1.url, "name": "shared"}, {"url": s2.url, "name": "x2"}]},
        "y": {"servers": [{"url": s1.url, "name": "shared"}, {"url": s2.url, "name": "y2"}]}})
    r = admin(lx, "POST", "/admin/nodes/shared/drain")
    assert r.status_code == 200, r.text
    assert sorted(n["model"] for n in r.json()["nodes"]) == ["x", "y"]
    for m, other in (("x", "x2"), ("y", "y2")):
        assert {chat(lx.client, m).headers["x-routed-node"] for _ in range(4)} == {other}
    # A change of the pool keeps the drain (by name), also for a rebuilt node.
    r = admin(lx, "PUT", "/admin/models/x", json={"servers": [
        {"url": s1.url, "name": "shared", "weight": 2}, {"url": s2.url, "name": "x2"}]})
    assert r.status_code == 200, r.text
    assert {s["name"]: s["drained"] for s in r.json()["servers"]} == {"shared": True,
                                                                      "x2": False}
    assert {chat(lx.client, "x").headers["x-routed-node"] for _ in range(4)} == {"x2"}
    admin(lx, "POST", "/admin/nodes/shared/enable")
    assert "shared" in {chat(lx.client, "y").headers["x-routed-node"] for _ in range(4)}


# ---- persistence -----------------------------------------------------------

def test_changes_are_written_to_the_config_file_and_survive_a_restart(procs, tmp_path):
    s1, s2 = procs.sim(fast=True), procs.sim(fast=True)
    lx, cfg = start_with_config(procs, tmp_path, {"base": {"servers": [s1.url]}},
                                max_retries=1, workers=2)
    os.chmod(cfg, 0o640)
    r = admin(lx, "POST", "/admin/models", json={
        "model_name": "org/added", "servers": [{"url": s2.url, "name": "n2",
                                                "api_key": "sk-kept-on-disk"}],
        "upstream_model": "real-name"})
    assert r.status_code == 201 and r.json()["persisted"] is True, r.text
    on_disk = json.loads(cfg.read_text())
    # Other keys and pools stay as written; the new pool has its real secret.
    assert on_disk["max_retries"] == 1 and on_disk["workers"] == 2
    assert on_disk["models"]["base"] == {"servers": [s1.url]}
    assert on_disk["models"]["org/added"] == {
        "servers": [{"url": s2.url, "name": "n2", "api_key": "sk-kept-on-disk"}],
        "upstream_model": "real-name"}
    assert os.stat(cfg).st_mode & 0o777 == 0o640
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".llmux.json.")], \
        "temporary file left behind"
    lx.stop()

    lx2 = procs.llmux(args=["--config", str(cfg), "--admin-token", TOKEN])
    r = chat(lx2.client, "org/added")
    assert r.status_code == 200, r.text
    assert r.headers["x-routed-node"] == "n2" and r.json()["model"] == "real-name"
    # PUT and DELETE are written too.
    r = admin(lx2, "PUT", "/admin/models/base", json={"strategy": "random"})
    assert r.status_code == 200, r.text
    r = admin(lx2, "DELETE", "/admin/models/org%2Fadded")
    assert r.status_code == 200, r.text
    on_disk = json.loads(cfg.read_text())
    assert on_disk["models"] == {"base": {"servers": [s1.url], "strategy": "random"}}
    lx2.stop()

    lx3 = procs.llmux(args=["--config", str(cfg), "--admin-token", TOKEN])
    check_error(chat(lx3.client, "org/added"), 404)
    assert pools(lx3)["base"]["strategy"] == "random"


def test_a_failed_config_write_applies_nothing(procs, tmp_path):
    s1, s2 = procs.sim(fast=True), procs.sim(fast=True)
    lx, cfg = start_with_config(procs, tmp_path, {"base": {"servers": [s1.url]},
                                                  "two": {"servers": [s1.url]}})
    cfg.unlink()  # the file can no longer be updated
    r = admin(lx, "POST", "/admin/models", json={"model_name": "new", "servers": [s2.url]})
    err = check_error(r, 500, "config_write_failed")
    assert "llmux.json" in err["message"] and "not applied" in err["message"]
    r = admin(lx, "PUT", "/admin/models/base", json={"servers": [s2.url]})
    check_error(r, 500, "config_write_failed")
    check_error(admin(lx, "DELETE", "/admin/models/two"), 500, "config_write_failed")
    assert set(pools(lx)) == {"base", "two"}
    check_error(chat(lx.client, "new"), 404)
    for m in ("base", "two"):
        r = chat(lx.client, m)
        assert r.status_code == 200 and r.headers["x-routed-node"] == s1.url
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".llmux.json.")], \
        "temporary file left behind"
    # Drain is run-time state, not configuration: it still works.
    assert admin(lx, "POST", "/admin/nodes/%s/drain" % quote(s1.url, safe="")).status_code == 200


def test_without_a_config_file_changes_live_in_memory(procs):
    s1, s2 = procs.sim(fast=True), procs.sim(fast=True)
    lx = procs.llmux([s1], args=["--model", "m1", "--admin-token", TOKEN])
    r = admin(lx, "GET", "/admin/models")
    assert r.json()["persistent"] is False and r.json()["config_path"] is None
    r = admin(lx, "POST", "/admin/models", json={"model_name": "m2", "servers": [s2.url]})
    assert r.status_code == 201, r.text
    assert r.json()["persisted"] is False and "restart" in r.json()["note"]
    r = chat(lx.client, "m2")
    assert r.status_code == 200 and r.headers["x-routed-node"] == s2.url
    r = admin(lx, "PUT", "/admin/models/m1", json={"servers": [s2.url]})
    assert r.status_code == 200 and r.json()["persisted"] is False
    assert chat(lx.client, "m1").headers["x-routed-node"] == s2.url


def test_admin_changes_start_from_a_sighup_reload(procs, tmp_path):
    s1, s2 = procs.sim(fast=True), procs.sim(fast=True)
    lx, cfg = start_with_config(procs, tmp_path, {"a": {"servers": [s1.url]}})
    assert set(pools(lx)) == {"a"}
    write_config(cfg, {"a": {"servers": [s1.url]}, "b": {"servers": [s2.url]}})
    lx.signal(signal.SIGHUP)
    wait_for(lambda: chat(lx.client, "b").status_code == 200, T(10), what="reload of b")
    assert set(pools(lx)) == {"a", "b"}
    r = admin(lx, "POST", "/admin/models", json={"model_name": "c", "servers": [s2.url]})
    assert r.status_code == 201, r.text
    assert set(json.loads(cfg.read_text())["models"]) == {"a", "b", "c"}
    for m in ("a", "b", "c"):
        assert chat(lx.client, m).status_code == 200


# ---- concurrency -----------------------------------------------------------

def test_admin_changes_under_load_are_safe(procs, tmp_path):
    """200 client requests (half of them streams) in flight from threads
    while 50 admin POST/PUT/DELETE calls run in parallel: every request gets
    a valid answer, llmux stays up, the file stays valid, SIGTERM exits 0."""
    s1, s2 = procs.sim(decode_ms=10), procs.sim(decode_ms=10)
    churn = ["churn-%d" % i for i in range(5)]
    lx, cfg = start_with_config(procs, tmp_path, {
        "stable": {"servers": [{"url": s1.url, "name": "s1"}, {"url": s2.url, "name": "s2"}]}})
    start = threading.Event()
    failures = []

    def client_call(i):
        model = "stable" if i % 2 == 0 else churn[(i // 2) % len(churn)]
        stream = i % 4 < 2
        body = chat_body(model=model, stream=stream, max_tokens=6,
                         content="request %d under admin load" % i)
        start.wait()
        with lx.new_client() as c:
            if stream:
                with c.stream("POST", CHAT, json=body) as r:
                    if r.status_code == 200:
                        events = read_sse(r)
                        ok = bool(events) and events[-1].done
                    else:
                        r.read()
                        ok = r.status_code == 404 and model != "stable"
                    return model, r.status_code, ok
            r = c.post(CHAT, json=body)
            if r.status_code == 200:
                ok = r.json()["usage"]["completion_tokens"] == 6
            else:
                ok = r.status_code == 404 and model != "stable" and \
                    r.json()["error"]["code"] == "model_not_found"
            return model, r.status_code, ok

    def admin_calls(k):
        model = churn[k]
        url = [s1.url, s2.url]
        got = []
        start.wait()
        with lx.new_client() as c:
            for n in range(10):
                op = n % 3
                if op == 0:
                    r = c.post("/admin/models", headers=AUTH, json={
                        "model_name": model, "servers": [url[n % 2]]})
                    got.append((r.status_code, 201))
                elif op == 1:
                    r = c.put("/admin/models/" + model, headers=AUTH, json={
                        "servers": [url[(n + 1) % 2], {"url": url[n % 2], "name": "x%d" % n}]})
                    got.append((r.status_code, 200))
                else:
                    r = c.delete("/admin/models/" + model, headers=AUTH)
                    got.append((r.status_code, 200))
        return got

    # One thread per call: all 200 client requests are in flight at once.
    with ThreadPoolExecutor(max_workers=200 + len(churn)) as pool:
        clients = [pool.submit(client_call, i) for i in range(200)]
        admins = [pool.submit(admin_calls, k) for k in range(len(churn))]
        time.sleep(0.2)
        start.set()
        results = [f.result(timeout=T(120)) for f in clients]
        admin_results = [f.result(timeout=T(120)) for f in admins]

    for model, status, ok in results:
        if not ok:
            failures.append((model, status))
    assert not failures, failures[:10]
    assert sum(1 for m, s, _ in results if m == "stable" and s == 200) == 100
    assert sum(len(g) for g in admin_results) == 50
    for g in admin_results:
        assert [s for s, _ in g] == [want for _, want in g], g
    assert lx.alive()

    # The final state: churn pools after P,U,D,P,U,D,P,U,D,P exist, in memory and on disk.
    assert set(pools(lx)) == {"stable"} | set(churn)
    on_disk = json.loads(cfg.read_text())
    assert set(on_disk["models"]) == {"stable"} | set(churn)
    r = subprocess.run([bin_path("llmux"), "--check-config", "--config", str(cfg)],
                       capture_output=True, timeout=T(20), env=clean_env(), cwd=str(tmp_path))
    assert r.returncode == 0, r.stderr
    for m in churn:
        assert chat(lx.client, m).status_code == 200
    assert lx.stop() == 0
