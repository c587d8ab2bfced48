"""
GET /status, the live HTML status page, in a real browser.

The page holds no data: its script fetches /stats every 2 s and renders it.
These tests load it in headless Chromium (Debian's `chromium` package)
against real llmux and llmux-sim processes, two ways:

- `--dump-dom` after a virtual-time budget: the DOM once the script has
  fetched /stats a few times (what the page shows, as HTML);
- the DevTools protocol over a pipe (`--remote-debugging-pipe`, stdlib only):
  to type a token and click, read sessionStorage and location, and watch
  rates appear over real time.

Chromium runs as the machine's notes ask (root: --no-sandbox; no network:
--disable-background-networking and friends; a new empty profile each time),
in its own process group, killed by that group's id when it outlives its
bound. When it is missing and we are root, the session installs it once with
apt-get (bounded); the test skips only when that fails.
"""
import base64
import hashlib
import html.parser
import json
import os
import re
import select
import shutil
import signal
import subprocess
import tempfile
import threading
import time

import httpx
import pytest

from conftest import T
from e2e_util import chat_body, wait_for

CHAT = "/v1/chat/completions"
TOKEN = "s3cret-status-token"

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                  "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--hide-scrollbars",
                  "--window-size=1280,900"]


# ---- Chromium ---------------------------------------------------------------

def _find_chromium():
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


@pytest.fixture(scope="session")
def chromium():
    path = _find_chromium()
    if path:
        return path
    why = "chromium is not installed"
    if os.geteuid() == 0 and shutil.which("apt-get") and not os.environ.get("LLMUX_E2E_NO_INSTALL"):
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        for argv in (["apt-get", "install", "-y", "-q", "chromium"],
                     ["apt-get", "update", "-q"],
                     ["apt-get", "install", "-y", "-q", "chromium"]):
            try:
                r = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True,
                                   timeout=600, env=env)
            except subprocess.TimeoutExpired:
                why += "; %s timed out" % " ".join(argv)
                break
            path = _find_chromium()
            if path:
                return path
            if r.returncode != 0:
                why += "; %s exited %d" % (" ".join(argv), r.returncode)
    pytest.skip(why + " (apt-get install chromium)")


def _kill_group(p):
    """SIGKILLs the process group we started Chromium in, and reaps its leader."""
    try:
        os.killpg(p.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        p.wait(timeout=T(10))
    except subprocess.TimeoutExpired:
        pass


def dump_dom(chromium, url, budget_ms=6000):
    """The page's DOM after <budget_ms> of virtual time (JS timers and fetches run)."""
    profile = tempfile.mkdtemp(prefix="lx-chromium-")
    argv = [chromium] + CHROMIUM_FLAGS + ["--user-data-dir=" + profile,
                                          "--virtual-time-budget=%d" % budget_ms,
                                          "--dump-dom", url]
    p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, start_new_session=True)
    try:
        out, err = p.communicate(timeout=T(60))
    except subprocess.TimeoutExpired:
        _kill_group(p)
        pytest.fail("chromium --dump-dom %s did not finish within %d s" % (url, T(60)))
    finally:
        shutil.rmtree(profile, ignore_errors=True)
    assert p.returncode == 0, "chromium exited %d\n%s" % (p.returncode, err[-3000:].decode())
    return Dom(out.decode("utf-8"))


class Cdp:
    """
    A minimal DevTools-protocol client over --remote-debugging-pipe: Chromium
    reads commands on fd 3 and writes answers and events on fd 4, each one
    JSON text ended by a NUL byte. One page target, flat sessions.
    """

    def __init__(self, chromium, width=1280, height=900):
        import fcntl
        self.profile = tempfile.mkdtemp(prefix="lx-chromium-")
        a_r, self.wfd = os.pipe()
        self.rfd, b_w = os.pipe()
        # Above 4, so that the child's dup2() onto 3 and 4 cannot clobber them.
        self.child_r = fcntl.fcntl(a_r, fcntl.F_DUPFD, 10)
        self.child_w = fcntl.fcntl(b_w, fcntl.F_DUPFD, 10)
        os.close(a_r)
        os.close(b_w)
        child_r, child_w = self.child_r, self.child_w

        def to_fds_3_4():
            os.dup2(child_r, 3)
            os.dup2(child_w, 4)

        self.p = subprocess.Popen(
            [chromium] + CHROMIUM_FLAGS + ["--user-data-dir=" + self.profile,
                                           "--remote-debugging-pipe", "about:blank"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            preexec_fn=to_fds_3_4, pass_fds=(3, 4, child_r, child_w), start_new_session=True)
        os.close(child_r)
        os.close(child_w)
        self.buf = b""
        self.next_id = 0
        self.session = None
        try:
            target = self.call("Target.createTarget", {"url": "about:blank"})["targetId"]
            self.session = self.call("Target.attachToTarget",
                                     {"targetId": target, "flatten": True})["sessionId"]
            self.call("Page.enable")
            self.call("Emulation.setDeviceMetricsOverride",
                      {"width": width, "height": height, "deviceScaleFactor": 1,
                       "mobile": False})
        except BaseException:
            self.close()
            raise

    def _message(self, deadline):
        while b"\0" not in self.buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError("chromium did not answer in time")
            ready, _, _ = select.select([self.rfd], [], [], left)
            if ready:
                data = os.read(self.rfd, 1 << 16)
                if not data:
                    raise AssertionError("chromium closed its DevTools pipe")
                self.buf += data
        msg, self.buf = self.buf.split(b"\0", 1)
        return json.loads(msg)

    def call(self, method, params=None, timeout=None):
        self.next_id += 1
        msg = {"id": self.next_id, "method": method, "params": params or {}}
        if self.session:
            msg["sessionId"] = self.session
        os.write(self.wfd, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + (timeout or T(30))
        while True:
            m = self._message(deadline)
            if m.get("id") == self.next_id:
                assert "error" not in m, "%s: %s" % (method, m["error"])
                return m.get("result", {})

    def eval(self, expr):
        r = self.call("Runtime.evaluate", {"expression": expr, "returnByValue": True,
                                           "awaitPromise": True})
        assert "exceptionDetails" not in r, "JS %r: %r" % (expr, r["exceptionDetails"])
        return r["result"].get("value")

    def navigate(self, url):
        self.call("Page.navigate", {"url": url})

    def wait_js(self, expr, timeout, what=None):
        return wait_for(lambda: self.eval(expr), timeout, interval=0.1, what=what or expr)

    def screenshot(self, path):
        data = self.call("Page.captureScreenshot", {"format": "png"})["data"]
        with open(path, "wb") as f:
            f.write(base64.b64decode(data))

    def close(self):
        if self.p.poll() is None:
            try:
                self.session = None
                self.next_id += 1
                os.write(self.wfd, json.dumps({"id": self.next_id, "method": "Browser.close",
                                               "params": {}}).encode() + b"\0")
                self.p.wait(timeout=T(10))
            except (OSError, subprocess.TimeoutExpired):
                pass
        _kill_group(self.p)  # Chromium's helpers, if any outlived it
        for fd in (self.wfd, self.rfd):
            try:
                os.close(fd)
            except OSError:
                pass
        shutil.rmtree(self.profile, ignore_errors=True)


@pytest.fixture
def browser(chromium):
    b = Cdp(chromium)
    try:
        yield b
    finally:
        b.close()


# ---- a small DOM from Chromium's serialisation --------------------------------

VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source",
        "track", "wbr"}


class Element:
    def __init__(self, tag, attrs, parent):
        self.tag = tag
        self.attrs = dict(attrs)
        self.parent = parent
        self.children = []  # Elements and str

    def text(self):
        return "".join(c if isinstance(c, str) else c.text() for c in self.children)

    def iter(self):
        yield self
        for c in self.children:
            if isinstance(c, Element):
                yield from c.iter()

    def find_all(self, tag=None, **attrs):
        return [e for e in self.iter() if (tag is None or e.tag == tag) and
                all(e.attrs.get(k.replace("_", "-")) == v for k, v in attrs.items())]

    def find(self, tag=None, **attrs):
        found = self.find_all(tag, **attrs)
        return found[0] if found else None


class Dom(html.parser.HTMLParser):
    def __init__(self, text):
        super().__init__(convert_charrefs=True)
        self.source = text
        self.root = Element("#document", (), None)
        self.cur = self.root
        self.feed(text)
        self.close()

    def handle_starttag(self, tag, attrs):
        e = Element(tag, attrs, self.cur)
        self.cur.children.append(e)
        if tag not in VOID:
            self.cur = e

    def handle_startendtag(self, tag, attrs):
        self.cur.children.append(Element(tag, attrs, self.cur))

    def handle_endtag(self, tag):
        e = self.cur
        while e is not None and e.tag != tag:
            e = e.parent
        if e is not None and e.parent is not None:
            self.cur = e.parent

    def handle_data(self, data):
        self.cur.children.append(data)

    def find(self, tag=None, **attrs):
        return self.root.find(tag, **attrs)

    def find_all(self, tag=None, **attrs):
        return self.root.find_all(tag, **attrs)

    def by_id(self, id_):
        return self.root.find(id=id_)

    @property
    def body(self):
        return self.root.find("body")

    def rows(self):
        """{node name: (state, shown requests_total)} from the node tables."""
        out = {}
        for tr in self.root.find_all("tr"):
            if "data-node" not in tr.attrs:
                continue
            cell = tr.find("td", data_field="requests_total")
            out[tr.attrs["data-node"]] = (tr.attrs.get("data-state"),
                                          int(cell.text().replace(",", "")))
        return out


# ---- helpers ------------------------------------------------------------------

def send_chats(lx, n, headers=None):
    for i in range(n):
        r = lx.client.post(CHAT, json=chat_body(content="status page %d" % i, max_tokens=4),
                           headers=headers or {})
        assert r.status_code == 200, r.text


def start_gateway(procs, tmp_path, names, env=None, dead_port=None, args=()):
    """Starts one sim per name and llmux with a config naming them."""
    sims = [procs.sim(fast=True) for _ in names]
    servers = [{"url": s.url, "name": n} for s, n in zip(sims, names)]
    if dead_port:
        servers.append({"url": "http://127.0.0.1:%d" % dead_port, "name": "dead-node"})
    cfg = tmp_path / "llmux.json"
    cfg.write_text(json.dumps({"models": {"sim-model": {"servers": servers,
                                                        "strategy": "round_robin"}}}))
    return sims, procs.llmux(args=["--config", str(cfg)] + list(args), env=env)


def stats(lx, headers=None):
    r = lx.client.get("/stats", headers=headers or {})
    assert r.status_code == 200, r.text
    return r.json()


def inline_block(page, tag):
    m = re.search(r"<%s>(.*?)</%s>" % (tag, tag), page, re.S)
    assert m, "no inline <%s> in the page" % tag
    return m.group(1)


def csp_hash(text):
    return "'sha256-%s'" % base64.b64encode(hashlib.sha256(text.encode()).digest()).decode()


# ---- the response itself --------------------------------------------------------

def test_status_is_one_self_contained_page_with_strict_headers(procs):
    sim = procs.sim(fast=True)
    lx = procs.llmux([sim])
    r = lx.client.get("/status")
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "text/html; charset=utf-8"
    assert r.headers["cache-control"] == "no-store"
    assert r.headers["x-request-id"]
    assert r.headers["x-content-type-options"] == "nosniff"
    page = r.text
    assert page.startswith("<!DOCTYPE html>")
    # The page holds no data: nothing about the nodes is in it.
    assert sim.url not in page and str(sim.port) not in page

    # Nothing loaded from elsewhere: no src= at all, links only to data: URLs.
    assert not re.search(r"\ssrc\s*=", page, re.I)
    for href in re.findall(r"\shref\s*=\s*\"([^\"]*)\"", page, re.I):
        assert href.startswith("data:"), href
    assert "@import" not in page and "url(" not in page
    # The SVG namespace is a name, not an address the page loads.
    assert not re.search(r"https?://", page.replace("'http://www.w3.org/2000/svg'", "")), \
        "the page names an external URL"

    csp = {d.split()[0]: d.split()[1:] for d in
           (p.strip() for p in r.headers["content-security-policy"].split(";")) if d}
    assert csp["default-src"] == ["'self'"]
    assert csp["connect-src"] == ["'self'"]
    assert csp["frame-ancestors"] == ["'none'"]
    # Inline blocks are allowed by hash: both must match what is served.
    for tag, directive in (("script", "script-src"), ("style", "style-src")):
        want = csp_hash(inline_block(page, tag))
        assert csp[directive] == [want], (
            "%s in the CSP is %s but the page's <%s> hashes to %s: update LX_STATUS_CSP "
            "in src/obs/status_page.c" % (directive, csp[directive], tag, want))
    # Data reaches the DOM through textContent only.
    assert "innerHTML" not in page and "insertAdjacentHTML" not in page
    assert "document.write" not in page

    h = lx.client.head("/status")
    assert h.status_code == 200 and h.content == b""
    p = lx.client.post("/status", content=b"x")
    assert p.status_code == 405
    assert "GET" in p.headers["allow"]


# ---- rendered in a browser ---------------------------------------------------------

def test_page_renders_every_node_with_its_state_and_updates(procs, tmp_path, chromium,
                                                            closed_port):
    names = ["alpha", "beta", '<em id="pwned">gamma</em>']
    # Fast health checks, so that the dead node settles as unhealthy.
    sims, lx = start_gateway(procs, tmp_path, names, dead_port=closed_port,
                             env={"HEALTH_CHECK_INTERVAL_SECONDS": "0.2"})
    send_chats(lx, 12)
    wait_for(lambda: {n["name"]: n["state"] for n in stats(lx)["nodes"]}["dead-node"] ==
             "unhealthy", T(10), what="the dead node marked unhealthy")
    before = {n["name"]: n for n in stats(lx)["nodes"]}
    dom = dump_dom(chromium, lx.url + "/status")
    after = {n["name"]: n for n in stats(lx)["nodes"]}

    body = dom.body
    assert body.attrs.get("data-view") == "dash", dom.source[-3000:]
    assert int(body.attrs["data-updates"]) >= 1
    rows = dom.rows()
    assert set(rows) == set(names) | {"dead-node"}, rows
    for name, (state, shown) in rows.items():
        assert state in (before[name]["state"], after[name]["state"]), (name, state)
        assert shown == after[name]["requests_total"], (name, shown, after[name])
        # The state is written in the row, next to the name.
        tr = dom.find("tr", data_node=name)
        assert tr.find("span", **{"class": "name"}).text() == name
        assert tr.find("td", **{"class": "state"}).find("span").text() == state.replace("_", " ")
    for name in names:
        assert rows[name][0] == "healthy"
    assert rows["dead-node"][0] == "unhealthy"
    dead = dom.find("tr", data_node="dead-node")
    assert "connection refused" in dead.find("div", **{"class": "err"}).text()
    # A name that looks like markup stays text.
    assert dom.by_id("pwned") is None and not dom.find_all("em")
    # The gateway summary and the pool's header.
    s = stats(lx)
    assert dom.by_id("version").text() == s["version"]
    assert dom.by_id("c-active").text().replace(" ", "") == "%d/%d" % (
        s["gateway"]["active_requests"], s["gateway"]["max_concurrent_requests"])
    pool = dom.find("section", data_model="sim-model")
    assert pool is not None and "round_robin" in pool.text()
    assert dom.by_id("overall").text() == "degraded"

    # More traffic: the next load shows bigger numbers.
    send_chats(lx, 9)
    dom2 = dump_dom(chromium, lx.url + "/status")
    rows2 = dom2.rows()
    now = {n["name"]: n["requests_total"] for n in stats(lx)["nodes"]}
    assert {k: v[1] for k, v in rows2.items()} == now
    assert sum(rows2[n][1] for n in names) >= sum(rows[n][1] for n in names) + 9
    for n in names:
        assert rows2[n][1] > rows[n][1], (n, rows[n], rows2[n])


def test_drained_node_shows_as_drained_not_unhealthy(procs, tmp_path, chromium):
    # /stats says healthy: false for a drained node (it takes no new
    # requests); the page goes by its state, and by /stats' own status.
    names = ["alpha", "beta"]
    admin = {"Authorization": "Bearer " + TOKEN}
    sims, lx = start_gateway(procs, tmp_path, names, args=["--admin-token", TOKEN])
    r = lx.client.post("/admin/nodes/alpha/drain", headers=admin)
    assert r.status_code == 200, r.text
    s = stats(lx)
    assert {n["name"]: n["state"] for n in s["nodes"]} == {"alpha": "drained", "beta": "healthy"}
    assert s["status"] == "degraded"

    dom = dump_dom(chromium, lx.url + "/status")
    assert dom.body.attrs.get("data-view") == "dash", dom.source[-3000:]
    assert {k: v[0] for k, v in dom.rows().items()} == {"alpha": "drained", "beta": "healthy"}
    alpha = dom.find("tr", data_node="alpha")
    assert alpha.find("td", **{"class": "state"}).find("span").text() == "drained"
    assert dom.body.attrs.get("data-overall") == s["status"]
    assert dom.by_id("overall").text() == s["status"]
    sub = dom.by_id("c-nodes-sub").text()
    assert "1 drained" in sub and "unhealthy" not in sub, sub
    assert dom.by_id("c-nodes").text().replace(" ", "") == "1/2"

    # Every node drained: the pool is down, as /stats and /health say.
    r = lx.client.post("/admin/nodes/beta/drain", headers=admin)
    assert r.status_code == 200, r.text
    assert stats(lx)["status"] == "down"
    dom = dump_dom(chromium, lx.url + "/status")
    assert dom.by_id("overall").text() == "down"
    sub = dom.by_id("c-nodes-sub").text()
    assert "2 drained" in sub and "unhealthy" not in sub, sub


def test_page_asks_for_the_token_when_stats_needs_one(procs, tmp_path, chromium):
    names = ["node-one", "node-two"]
    sims, lx = start_gateway(procs, tmp_path, names, env={"AUTH_TOKEN": TOKEN})
    send_chats(lx, 4, headers={"Authorization": "Bearer " + TOKEN})
    # The page itself needs no token (it has no data); /stats does.
    assert lx.client.get("/status").status_code == 200
    assert lx.client.get("/stats").status_code == 401

    dom = dump_dom(chromium, lx.url + "/status")
    assert dom.body.attrs.get("data-view") == "auth", dom.source[-3000:]
    assert dom.find("input", id="token") is not None
    assert dom.find("button", id="token-go") is not None
    assert dom.rows() == {}
    assert dom.by_id("auth-error").text() == ""

    # A wrong token (the #token= automation hook) is refused: asked again.
    dom = dump_dom(chromium, lx.url + "/status#token=wrong-token")
    assert dom.body.attrs.get("data-view") == "auth"
    assert "not accepted" in dom.by_id("auth-error").text()
    assert dom.rows() == {}

    dom = dump_dom(chromium, lx.url + "/status#token=" + TOKEN)
    assert dom.body.attrs.get("data-view") == "dash", dom.source[-3000:]
    assert {k: v[0] for k, v in dom.rows().items()} == {n: "healthy" for n in names}
    assert sum(v[1] for v in dom.rows().values()) == 4


def test_token_form_session_storage_and_rates_in_a_live_page(procs, tmp_path, browser):
    names = ["n1", "n2", "n3"]
    sims, lx = start_gateway(procs, tmp_path, names, env={"AUTH_TOKEN": TOKEN})
    auth = {"Authorization": "Bearer " + TOKEN}
    view = "(document.body && document.body.getAttribute('data-view'))"

    # The fragment is consumed and removed from the address bar; the refused
    # token is not kept.
    browser.navigate(lx.url + "/status#token=nope")
    browser.wait_js(view + " === 'auth' && document.getElementById('auth-error').textContent",
                    T(15), "the refusal")
    assert browser.eval("location.hash") == ""
    assert browser.eval("location.href") == lx.url + "/status"
    assert browser.eval("sessionStorage.getItem('llmux.status.token')") is None

    # Typing the token and pressing the button shows the nodes.
    browser.eval("document.getElementById('token').value = %s;"
                 "document.getElementById('token-go').click(); true" % json.dumps(TOKEN))
    browser.wait_js(view + " === 'dash' && document.querySelectorAll('tr[data-node]').length",
                    T(15), "the node rows")
    assert browser.eval("sessionStorage.getItem('llmux.status.token')") == TOKEN
    assert browser.eval("[...document.querySelectorAll('tr[data-node]')]"
                        ".map(e => e.dataset.node)") == names

    # Rates come from two samples over real time: traffic between them shows.
    # The page shows the rate over the last two samples, 2 s apart; the one
    # after the traffic is positive (polled for often enough not to miss it).
    send_chats(lx, 10, headers=auth)

    def rates():
        got = browser.eval("[...document.querySelectorAll('td[data-field=rate]')]"
                           ".map(e => e.textContent)")
        if all(re.fullmatch(r"\d+(\.\d+)?", r) for r in got) and \
                sum(float(r) for r in got) > 0:
            return got
        return None
    wait_for(rates, T(15), interval=0.1, what="positive request rates")
    assert re.search(r"\d", browser.eval("document.getElementById('c-rate').textContent"))

    # A reload keeps the token (this tab's sessionStorage); "forget" asks again.
    browser.eval("window.lxOldPage = true")
    browser.call("Page.reload")
    browser.wait_js("!window.lxOldPage && " + view + " === 'dash' && "
                    "document.querySelectorAll('tr[data-node]').length", T(15),
                    "the rows after a reload")
    browser.eval("document.getElementById('logout').click(); true")
    browser.wait_js(view + " === 'auth'", T(5), "the prompt after forgetting the token")
    assert browser.eval("sessionStorage.getItem('llmux.status.token')") is None


def test_page_survives_the_gateway_going_away(procs, tmp_path, browser):
    sims, lx = start_gateway(procs, tmp_path, ["only"])
    browser.navigate(lx.url + "/status")
    browser.wait_js("document.querySelectorAll('tr[data-node]').length", T(15), "the row")
    lx.stop()
    browser.wait_js("!document.getElementById('banner').hidden", T(15), "the banner")
    assert "Cannot read /stats" in browser.eval("document.getElementById('banner').textContent")
    # The last good figures stay on the page.
    assert browser.eval("document.querySelectorAll('tr[data-node]').length") == 1


def _chart_points(browser, chart):
    """{series: [(x, y), ...]} of one chart, read from its SVG paths (y down, 0..80)."""
    got = browser.eval("[...document.querySelectorAll('[data-chart=%s] path')]"
                       ".map(p => [p.dataset.series, p.getAttribute('d') || ''])" % chart)
    return {name: [tuple(float(v) for v in xy.split())
                   for xy in re.findall(r"[ML]([-\d.]+ [-\d.]+)", d)] for name, d in got}


def test_charts_keep_what_the_page_saw_and_draw_it(procs, tmp_path, chromium, closed_port):
    """The page's history: ~12 s of mixed traffic (streamed, some refused with
    500, enough at once to queue) polled every 200 ms (/status?interval=200,
    ~60 samples, what a minute is at the default's scale) is drawn in the five
    charts, each with a line that has points and leaves the zero line; TTFT has
    one line per node with its p50 and p95; the vLLM gauges say how old they are."""
    names = ["gpu-a1", "gpu-a2", "gpu-a3"]
    sims, lx = start_gateway(procs, tmp_path, names, dead_port=closed_port,
                             env={"HEALTH_CHECK_INTERVAL_SECONDS": "0.5", "MAX_RETRIES": "0",
                                  "EJECT_COOLDOWN_SECONDS": "0",
                                  "MAX_CONCURRENT_REQUESTS": "3",
                                  "METRICS_UPDATE_INTERVAL_SECONDS": "1"})
    b = Cdp(chromium, height=960)
    stop = threading.Event()
    sent = {"ok": 0, "err": 0}

    def client(seed):
        with httpx.Client(base_url=lx.url, timeout=T(30)) as c:
            i = seed
            while not stop.is_set():
                i += 1
                sim = "ttft_ms=%d" % (5 + (i * 37) % 60)
                if i % 7 == 0:
                    sim += ",status=500"
                r = c.post(CHAT, json=chat_body(content="chart %d" % i, stream=True,
                                                max_tokens=8), headers={"x-sim": sim})
                sent["ok" if r.status_code == 200 else "err"] += 1

    threads = [threading.Thread(target=client, args=(k * 1000,), daemon=True) for k in range(6)]
    try:
        b.navigate(lx.url + "/status?interval=200")
        b.wait_js("document.querySelectorAll('tr[data-node]').length", T(15), "the rows")
        assert b.eval("document.getElementById('poll-every').textContent") == "200 ms"
        for t in threads:
            t.start()
        time.sleep(12)
        shot = os.environ.get("LLMUX_STATUS_SCREENSHOT")
        if shot:
            b.screenshot(shot)
        stop.set()
        for t in threads:
            t.join(T(30))
        assert sent["ok"] > 50 and sent["err"] > 5, sent
        # A few more samples after the traffic, so the lines come back down.
        time.sleep(1)

        charts = b.eval("[...document.querySelectorAll('[data-chart]')].map(c => c.dataset.chart)")
        assert charts == ["requests", "errors", "ttft", "queue", "tokens"], charts
        samples = int(b.eval("document.querySelector('[data-chart=requests]').dataset.samples"))
        assert samples >= 40, samples
        expect = {"requests": ["requests/s"], "errors": ["errors to clients"],
                  "tokens": ["completion tokens/s"], "queue": ["waiting", "active"],
                  "ttft": names}
        for chart, series in expect.items():
            pts = _chart_points(b, chart)
            for name in series:
                assert name in pts, (chart, name, list(pts))
                xs = [x for x, _ in pts[name]]
                assert len(xs) >= 10, (chart, name, pts[name])
                assert xs == sorted(xs) and 0 <= xs[0] and xs[-1] <= 300.01, (chart, name, xs)
                # Some point above the zero line (y = 80): the chart saw data.
                assert min(y for _, y in pts[name]) < 79, (chart, name, pts[name])
        # The node that never answered has no TTFT line.
        assert "dead-node" not in _chart_points(b, "ttft")
        legend = b.eval("[...document.querySelectorAll('[data-chart=ttft] .legend span')]"
                        ".map(e => [e.dataset.p50, e.dataset.p95, e.textContent])")
        assert len(legend) == 3, legend
        for p50, p95, text in legend:
            assert 0 < float(p50) <= float(p95), legend
            assert re.search(r"p50 [\d.]+ ms \u00b7 p95 [\d.]+ ms", text), text
        assert b.eval("document.querySelectorAll('[data-chart] .none:not([hidden])').length") == 0
        ages = b.eval("[...document.querySelectorAll('tr[data-node] [data-field=scrape_age]')]"
                      ".filter(e => !e.hidden).map(e => e.textContent)")
        assert len(ages) == 3 and all(re.fullmatch(r"scraped \d+s ago", a) for a in ages), ages
    finally:
        stop.set()
        b.close()
