"""Command line, environment, .env and JSON config file: what a user types."""
import json
import re
import subprocess
from pathlib import Path

import pytest

from conftest import LLMUX_READY, T, bin_path, clean_env
from e2e_util import chat_body


def run_llmux(args, env=None, cwd=None, timeout=None):
    """Runs llmux to completion (bounded) and returns the CompletedProcess."""
    return subprocess.run([bin_path("llmux")] + list(args), env=clean_env(env), cwd=cwd,
                          stdin=subprocess.DEVNULL, capture_output=True,
                          timeout=timeout or T(20))


def test_help_lists_the_spec_flags(tmp_path):
    r = run_llmux(["--help"], cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    out = r.stdout.decode()
    for flag in ("--config", "--listen", "--nodes", "--strategy", "--workers", "--version",
                 "--check-config", "--auth-token", "--max-retries", "--node-timeout"):
        assert flag in out, "--help does not mention %s:\n%s" % (flag, out)
    for var in ("VLLM_NODES", "AUTH_TOKEN", "MAX_RETRIES", "NODE_TIMEOUT_SECONDS"):
        assert var in out, "--help does not mention %s" % var


def help_settings(text):
    """[(flag or None, env var or None, default or None)] from `llmux --help`."""
    out, cur = [], None
    for line in text.splitlines():
        m = re.match(r"  (?:-\w, )?(--[a-z][a-z0-9-]*)\b", line)
        if m:
            cur = [m.group(1), None, None]
            out.append(cur)
            continue
        m = re.match(r"  ([A-Z][A-Z0-9_]+)\s{2,}", line)
        if m:
            cur = [None, m.group(1), None]
            out.append(cur)
            continue
        m = re.match(r"\s{20,}(?:env ([A-Z][A-Z0-9_]+), )?default: (.*)$", line)
        if m and cur is not None:
            cur[1] = cur[1] or m.group(1)
            cur[2] = m.group(2).strip()
        elif not line.startswith(" " * 20):
            cur = None
    return out


def test_config_md_lists_every_setting_of_help(tmp_path):
    """Each flag and variable --help names has a row in docs/CONFIG.md's settings
    table, the flag and its variable on the same row, with the same default."""
    r = run_llmux(["--help"], cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    settings = help_settings(r.stdout.decode())
    assert len(settings) > 40, settings
    doc = (Path(__file__).resolve().parents[2] / "docs" / "CONFIG.md").read_text()
    rows = [line for line in doc.splitlines() if line.startswith("| ")]
    missing = []
    for flag, env, default in settings:
        want = [w for w in (flag and "`%s" % flag, env and "`%s`" % env) if w]
        row = [line for line in rows
               if all(re.search(re.escape(w) + r"[ `=]", line) for w in want)]
        if not row:
            missing.append("%s: no row naming %s" % (flag or env, " and ".join(want)))
            continue
        cells = [c.strip() for c in row[0].strip("|").split("|")]
        num = re.match(r"-?[0-9.]+$", default or "")
        if num and len(cells) > 3 and not cells[3].startswith("`%s`" % default):
            missing.append("%s: --help says default %s, CONFIG.md %s"
                           % (flag or env, default, cells[3]))
    assert not missing, "docs/CONFIG.md disagrees with --help:\n" + "\n".join(missing)


@pytest.mark.parametrize("flag", ["--version", "-V"])
def test_version(tmp_path, flag):
    r = run_llmux([flag], cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    out = r.stdout.decode().strip()
    assert out.startswith("llmux "), out
    assert any(ch.isdigit() for ch in out), out
    assert b"listening" not in r.stderr


def check_config(tmp_path, args=(), env=None):
    r = run_llmux(["--check-config"] + list(args), env=env, cwd=tmp_path)
    return r


def test_check_config_prints_json_with_secrets_masked(tmp_path):
    env = {"VLLM_NODES": "http://127.0.0.1:9,http://127.0.0.1:10",
           "AUTH_TOKEN": "client-secret-4242", "ADMIN_TOKEN": "admin-secret-4343",
           "MAX_RETRIES": "5"}
    r = check_config(tmp_path, env=env)
    assert r.returncode == 0, r.stderr
    out = r.stdout.decode()
    assert "client-secret-4242" not in out and "admin-secret-4343" not in out, out
    assert "client-secret-4242" not in r.stderr.decode()
    conf = json.loads(out)
    assert conf["max_retries"] == 5, conf
    assert conf["auth_token"] not in (None, "", "client-secret-4242"), conf
    text = json.dumps(conf)
    assert "http://127.0.0.1:9" in text and "http://127.0.0.1:10" in text, conf


def test_check_config_masks_a_servers_api_key(tmp_path):
    cfg = tmp_path / "llmux.json"
    cfg.write_text(json.dumps({"models": {"m1": {"servers": [
        {"url": "http://127.0.0.1:9", "name": "n9", "api_key": "node-key-777"}]}}}))
    r = check_config(tmp_path, ["--config", str(cfg)])
    assert r.returncode == 0, r.stderr
    assert b"node-key-777" not in r.stdout, r.stdout
    conf = json.loads(r.stdout)
    assert "m1" in json.dumps(conf)


def test_flags_win_over_env_and_env_over_dotenv(tmp_path):
    (tmp_path / ".env").write_text("MAX_RETRIES=7\nNODE_TIMEOUT_SECONDS=33\n"
                                   "VLLM_NODES=http://127.0.0.1:9\n")
    r = check_config(tmp_path, env={"NODE_TIMEOUT_SECONDS": "44"})
    assert r.returncode == 0, r.stderr
    conf = json.loads(r.stdout)
    assert conf["max_retries"] == 7, conf          # from .env
    assert conf["node_timeout_seconds"] == 44, conf  # env beats .env
    r = check_config(tmp_path, ["--max-retries", "1", "--node-timeout=2.5"],
                     env={"NODE_TIMEOUT_SECONDS": "44"})
    assert r.returncode == 0, r.stderr
    conf = json.loads(r.stdout)
    assert conf["max_retries"] == 1, conf           # flag beats .env
    assert conf["node_timeout_seconds"] == 2.5, conf  # flag beats env


def test_retry_settings_through_the_layers(tmp_path):
    cfg = tmp_path / "llmux.json"
    cfg.write_text(json.dumps({
        "stream_resume": False, "retry_budget_percent": 50,
        "models": {"own": {"servers": ["http://127.0.0.1:9"], "hedge_after_seconds": 0.5},
                   "global": {"servers": ["http://127.0.0.1:10"]}}}))
    file_only = ([], {}, (False, 0, 50, 1))
    # The environment over the file, flags over both.
    layered = (["--hedge-after", "0.3", "--retry-budget-min-per-second=2"],
               {"STREAM_RESUME": "on", "RETRY_BUDGET_PERCENT": "5"}, (True, 0.3, 5, 2))
    for args, env, want in (file_only, layered):
        r = check_config(tmp_path, ["--config", str(cfg)] + args, env=env)
        assert r.returncode == 0, r.stderr
        conf = json.loads(r.stdout)
        got = tuple(conf[k] for k in ("stream_resume", "hedge_after_seconds",
                                      "retry_budget_percent", "retry_budget_min_per_second"))
        assert got == want, conf
        assert conf["models"]["own"]["hedge_after_seconds"] == 0.5, conf
        assert conf["models"]["global"]["hedge_after_seconds"] is None, conf


@pytest.mark.parametrize("args,env,key", [
    (["--bogus-flag"], {}, "--bogus-flag"),
    (["--workers", "zero"], {}, "workers"),
    (["--max-retries", "-1"], {}, "retries"),
    ([], {"MAX_RETRIES": "abc"}, "MAX_RETRIES"),
    ([], {"NODE_TIMEOUT_SECONDS": "soon"}, "NODE_TIMEOUT_SECONDS"),
    ([], {"CONNECT_TIMEOUT_SECONDS": "-3"}, "CONNECT_TIMEOUT_SECONDS"),
    ([], {"WORKERS": "0"}, "WORKERS"),
    ([], {"VLLM_NODES": "ftp://127.0.0.1:9"}, "VLLM_NODES"),
    ([], {"ROUTING_STRATEGY": "telepathy"}, "ROUTING_STRATEGY"),
    ([], {"MAX_BODY_BYTES": "lots"}, "MAX_BODY_BYTES"),
    ([], {"STREAM_RESUME": "sometimes"}, "STREAM_RESUME"),
    (["--hedge-after", "-1"], {}, "hedge-after"),
    ([], {"RETRY_BUDGET_PERCENT": "1001"}, "RETRY_BUDGET_PERCENT"),
    ([], {"RETRY_BUDGET_MIN_PER_SECOND": "-1"}, "RETRY_BUDGET_MIN_PER_SECOND"),
])
def test_bad_setting_exits_nonzero_naming_the_key_before_listening(tmp_path, args, env, key):
    env = dict(env)
    env.setdefault("VLLM_NODES", "http://127.0.0.1:9")
    r = run_llmux(["--listen", "127.0.0.1:0"] + args, env=env, cwd=tmp_path)
    assert r.returncode != 0, "llmux accepted %r %r:\n%s" % (args, env, r.stderr)
    err = r.stderr.decode()
    assert key.lower() in err.lower(), "error does not name %s: %s" % (key, err)
    assert not LLMUX_READY.search(r.stderr + r.stdout), "listened before failing: %s" % err
    # The same bad input is also refused by --check-config, with exit 1.
    r = run_llmux(["--check-config"] + args, env=env, cwd=tmp_path)
    assert r.returncode == 1, (r.returncode, r.stdout, r.stderr)


def test_bad_dotenv_value_is_refused_naming_the_key(tmp_path):
    (tmp_path / ".env").write_text("VLLM_NODES=http://127.0.0.1:9\nMAX_RETRIES=many\n")
    r = run_llmux(["--listen", "127.0.0.1:0"], cwd=tmp_path)
    assert r.returncode != 0
    assert b"MAX_RETRIES" in r.stderr, r.stderr


def test_config_file_unknown_key_names_the_json_path(tmp_path):
    cfg = tmp_path / "bad.json"
    cfg.write_text(json.dumps({"models": {"m1": {"servers": ["http://127.0.0.1:9"],
                                                 "stratgey": "round_robin"}}}))
    r = run_llmux(["--listen", "127.0.0.1:0", "--config", str(cfg)], cwd=tmp_path)
    assert r.returncode != 0, r.stderr
    assert b"stratgey" in r.stderr, r.stderr
    assert not LLMUX_READY.search(r.stderr)


def test_config_file_wrong_type_names_the_json_path(tmp_path):
    cfg = tmp_path / "bad.json"
    cfg.write_text(json.dumps({"models": {"m1": {"servers": [
        {"url": "http://127.0.0.1:9", "weight": "heavy"}]}}}))
    r = run_llmux(["--check-config", "--config", str(cfg)], cwd=tmp_path)
    assert r.returncode == 1, r.stdout
    assert b"weight" in r.stderr, r.stderr


def test_config_file_not_json_is_refused(tmp_path):
    cfg = tmp_path / "bad.json"
    cfg.write_text("{\"models\": ")
    r = run_llmux(["--check-config", "--config", str(cfg)], cwd=tmp_path)
    assert r.returncode == 1, r.stdout
    assert r.stderr.strip(), "no error message"


def test_env_only_configuration_serves(procs):
    """VLLM_NODES, GATEWAY_HOST, GATEWAY_PORT and WORKERS alone are enough."""
    node = procs.pynode()
    lx = procs.llmux(listen=None, workers=None,
                     env={"VLLM_NODES": node.url, "GATEWAY_HOST": "127.0.0.1",
                          "GATEWAY_PORT": "0", "WORKERS": "1"})
    r = lx.client.post("/v1/chat/completions", json=chat_body())
    assert r.status_code == 200, r.text
    assert r.headers["x-routed-node"] == node.url
    assert r.json()["method"] == "POST"


def test_dotenv_auth_token_applies(procs):
    node = procs.pynode()
    lx = procs.llmux([node], dotenv="AUTH_TOKEN=from-dotenv\n")
    assert lx.client.post("/v1/chat/completions", json=chat_body()).status_code == 401
    r = lx.client.post("/v1/chat/completions", json=chat_body(),
                       headers={"Authorization": "Bearer from-dotenv"})
    assert r.status_code == 200, r.text


def test_real_env_beats_dotenv(procs):
    node = procs.pynode()
    lx = procs.llmux([node], dotenv="AUTH_TOKEN=from-dotenv\n", env={"AUTH_TOKEN": "from-env"})
    r = lx.client.post("/v1/chat/completions", json=chat_body(),
                       headers={"Authorization": "Bearer from-dotenv"})
    assert r.status_code == 401, r.text
    r = lx.client.post("/v1/chat/completions", json=chat_body(),
                       headers={"Authorization": "Bearer from-env"})
    assert r.status_code == 200, r.text


def test_config_file_pool_with_upstream_model(procs):
    node = procs.pynode()
    cfg = procs.tmp / "pools.json"
    cfg.write_text(json.dumps({"models": {"public-name": {
        "servers": [{"url": node.url, "name": "echo-1"}],
        "upstream_model": "org/Real-Model-7B"}}}))
    lx = procs.llmux(args=["--config", str(cfg)])
    r = lx.client.post("/v1/chat/completions",
                       content=b'{"model": "public-name", "messages": [], "x": 1}')
    assert r.status_code == 200, r.text
    assert r.headers["x-routed-node"] == "echo-1"
    forwarded = json.loads(r.json()["body_head"])
    assert forwarded == {"model": "org/Real-Model-7B", "messages": [], "x": 1}
    r = lx.client.post("/v1/chat/completions", json=chat_body(model="other"))
    assert r.status_code == 404, r.text
    r = lx.client.get("/v1/models")
    assert r.status_code == 200
    assert [m["id"] for m in r.json()["data"]] == ["public-name"]


def test_health_reports_pools_and_nodes(procs):
    a, b = procs.pynode(), procs.pynode()
    lx = procs.llmux([a, b], args=["--model", "m-health"])
    r = lx.client.get("/health")
    assert r.status_code == 200, r.text
    h = r.json()
    assert h["status"] in ("ok", "healthy"), h
    assert isinstance(h["version"], str) and h["version"]
    assert len(h["pools"]) == 1
    pool = h["pools"][0]
    assert pool["model"] == "m-health" and pool["strategy"] == "round_robin", pool
    assert len(pool["nodes"]) == 2
    names = [n["name"] for n in h["nodes"]]
    assert names == [a.url, b.url], names
    for n in h["nodes"]:
        assert n["healthy"] is True and n["in_flight"] == 0 and n["requests_total"] == 0, n
        assert n["url"] == n["name"]


def test_sim_help_and_bad_flag(tmp_path):
    r = subprocess.run([bin_path("llmux-sim"), "--help"], env=clean_env(), cwd=tmp_path,
                       stdin=subprocess.DEVNULL, capture_output=True, timeout=T(20))
    assert r.returncode == 0, r.stderr
    assert b"--decode-ms" in r.stdout + r.stderr
    r = subprocess.run([bin_path("llmux-sim"), "--port", "0", "--no-such-flag"], env=clean_env(),
                       cwd=tmp_path, stdin=subprocess.DEVNULL, capture_output=True,
                       timeout=T(20))
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert b"no-such-flag" in r.stderr, r.stderr
    assert b"listening" not in r.stdout
