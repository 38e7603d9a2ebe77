"""dist/mephisto/ run the way Mephisto's LocalArchitect runs a router folder.

LocalArchitect (mephisto/abstractions/architects/local_architect.py and
router/build_router.py) copies architect.server_source_path into
<build>/router, copies the provider's wrap_crowd_source.js and writes
task_config.json into its static/, lets the task builder add bundle.js,
copies that folder into a run folder (copytree, symlinks=True), starts
`node server.js` (server_type=node) or `python app.py` (server_type=flask)
there in a new process group with PORT in the environment, has its backend
dial ws://localhost:PORT/, copies uploads from /tmp/<stored name>, and stops
the server with SIGTERM to the launcher's pid and an unbounded wait().

Every test here does that for both launchers, with MEPHISTO_ROUTER_BIN (the
router binary; default <repo>/build/mephisto-router), the fake backend and
fake browsers of tests/integration/mephisto_fakes.py, on localhost only.
Every wait is bounded; every process started is killed at teardown.

Run with Debian's Python (python3-pytest, python3-requests,
python3-websockets 10.x) and Node.js with npm on PATH:
    MEPHISTO_ROUTER_BIN=$PWD/build/mephisto-router \\
        /usr/bin/python3 -m pytest -q tests/launcher
"""

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import requests

REPO = Path(__file__).resolve().parents[2]
LAUNCHER_DIR = REPO / "dist" / "mephisto"
sys.path.insert(0, str(REPO / "tests" / "integration"))
sys.path.insert(0, str(REPO / "tests"))

from conftest import (WSClient, free_port, require_binary,  # noqa: E402
                      router_binary, wait_until)  # (tests/integration/conftest.py)
from mephisto_fakes import (  # noqa: E402
    FakeBackend, FakeBrowser, backend_packet, of_type)
from proclib import (cmdline_text, descendants, group_members,  # noqa: E402
                     is_running, listening, read_stat)

PYTHON = "/usr/bin/python3"
KINDS = ("node", "flask")
START_TIMEOUT = 15.0     # the launcher's router answers /is_alive within this
STOP_TIMEOUT = 12.0      # SIGTERM to exit: shutdown_timeout (5 s) + slack
GONE_TIMEOUT = 12.0      # every process of the tree gone after a kill
HTTP_TIMEOUT = 5.0
NPM_TIMEOUT = 120.0      # npm install: a bound, not the expectation
NPM_INSTANT = 30.0       # ... which is well under this on a loaded machine

# what Mephisto adds to static/ (build_router.py and the task builder)
WRAP_JS = b"/* wrap_crowd_source.js of the mock provider */\nwindow.wrapMarker = 1;\n"
BUNDLE_JS = b"/* the task's bundle.js */\nconsole.log('bundle-marker-5e1');\n"
TASK_CONFIG = {"task_title": "launcher test", "block_mobile": True,
               "mephisto_task_version": "2.0.4"}
# the router's log line for a second SIGTERM/SIGINT (no drain, workers killed)
AGAIN = "again: stopping the workers now"


def require_tool(name):
    path = shutil.which(name)
    if path is None:
        pytest.fail("%s not found on PATH: the node launcher needs Node.js and npm "
                    "(Debian: apt-get install nodejs npm)" % name, pytrace=False)
    return path


# --------------------------------------------------------------------------
# ports (free_port is the integration conftest's, listening tests/proclib.py's)

def port_free(port):
    """A new router could listen on port: nothing LISTENs there and a bind
    to 0.0.0.0 (SO_REUSEADDR, as the router binds) with listen succeeds."""
    if listening(port):
        return False
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("0.0.0.0", port))
            s.listen(1)
        except OSError:
            return False
    return True


# --------------------------------------------------------------------------
# LocalArchitect, as far as the router folder goes

def build_router_dir(build_root):
    """build_router(): copy the source folder, add what Mephisto adds."""
    router_dir = Path(build_root) / "router"
    shutil.copytree(str(LAUNCHER_DIR), str(router_dir))
    static = router_dir / "static"
    (static / "wrap_crowd_source.js").write_bytes(WRAP_JS)
    with open(str(static / "task_config.json"), "w+") as f:
        json.dump(TASK_CONFIG, f)
    (static / "bundle.js").write_bytes(BUNDLE_JS)
    return router_dir


def deploy_dir(router_dir, run_root):
    """deploy(): copy the built folder into the run folder."""
    running = Path(run_root) / "local_server_1" / "server"
    shutil.copytree(str(router_dir), str(running), symlinks=True)
    return running


def npm_install(folder):
    """build_router's `npm install`, offline: it must need nothing."""
    npm = require_tool("npm")
    env = dict(os.environ, npm_config_offline="true", npm_config_update_notifier="false",
               npm_config_cache=str(Path(folder).parent / "npm-cache"))
    t0 = time.monotonic()
    try:
        r = subprocess.run([npm, "install"], cwd=str(folder), env=env,
                           stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, timeout=NPM_TIMEOUT,
                           start_new_session=True)
    except subprocess.TimeoutExpired:
        pytest.fail("npm install --offline took over %.0f s" % NPM_TIMEOUT)
    took = time.monotonic() - t0
    out = r.stdout.decode("utf-8", "replace")
    assert r.returncode == 0, "npm install --offline failed (%d):\n%s" % (r.returncode, out)
    assert took < NPM_INSTANT, "npm install took %.1f s:\n%s" % (took, out)
    assert not (Path(folder) / "node_modules").exists() or \
        not any((Path(folder) / "node_modules").iterdir()), "npm installed packages"
    return took


class Launcher:
    """One launcher started as LocalArchitect.deploy() starts it, plus the
    bookkeeping to kill everything it started."""

    def __init__(self, kind, tmp_path, env=None, port=None, run_npm=True,
                 argv=None):
        self.kind = kind
        self.tmp = Path(tmp_path)
        self.router_dir = build_router_dir(self.tmp / "build")
        self.dir = deploy_dir(self.router_dir, self.tmp / "mephisto-tmp")
        if kind == "node" and run_npm:
            npm_install(self.dir)
        self.port = port or free_port()
        self.env = dict(os.environ)
        self.env.pop("MEPHISTO_ROUTER_BIN", None)
        self.env["PORT"] = str(self.port)
        self.env["MEPHISTO_ROUTER_BIN"] = router_binary()
        for k, v in (env or {}).items():
            if v is None:
                self.env.pop(k, None)
            else:
                self.env[k] = v
        if argv is None:
            argv = ([require_tool("node"), "server.js"] if kind == "node"
                    else [PYTHON, "app.py"])
        self.argv = argv
        self.log_path = self.tmp / ("launcher-%s.log" % kind)
        self.proc = None
        self.pgids = set()
        self.seen = set()      # every pid of the tree seen so far
        self.uploads = []      # /tmp files to delete
        self.payloads = []     # contents uploaded: their files are deleted too

    # -- lifecycle
    def start(self):
        self._log = open(str(self.log_path), "wb")
        self.proc = subprocess.Popen(self.argv, cwd=str(self.dir), env=self.env,
                                     stdin=subprocess.DEVNULL, stdout=self._log,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        self.pgids.add(self.proc.pid)
        return self

    @property
    def pid(self):
        return self.proc.pid

    def tree(self):
        """The launcher's live descendants (router and workers); remembered."""
        pids = descendants(self.pid)
        for p in pids:
            self.seen.add(p)
            st = read_stat(p)
            if st is not None:
                self.pgids.add(st[3])
        return pids

    def router_pid(self):
        kids = [p for p in self.tree() if read_stat(p) and read_stat(p)[2] == self.pid]
        return kids[0] if len(kids) == 1 else None

    def worker_pids(self):
        rp = self.router_pid()
        return [] if rp is None else [p for p in self.tree()
                                      if read_stat(p) and read_stat(p)[2] == rp]

    def log(self):
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def wait_alive(self, timeout=START_TIMEOUT):
        deadline = time.monotonic() + timeout
        last = None
        for _ in range(int(timeout / 0.05) + 50):
            if self.proc.poll() is not None:
                raise AssertionError("launcher exited with %s before /is_alive answered\n%s"
                                     % (self.proc.returncode, self.log()))
            try:
                r = get(self.url + "/is_alive", timeout=1)
                if r.status_code == 200 and r.json() == {"status": "Alive!"}:
                    break
                last = "status %d" % r.status_code
            except (requests.RequestException, ValueError) as e:
                last = repr(e)
            if time.monotonic() >= deadline:
                raise AssertionError("no /is_alive within %.0f s (last: %s)\n%s"
                                     % (timeout, last, self.log()))
            time.sleep(0.05)
        # the supervisor and at least one worker, all under the launcher
        assert wait_until(lambda: self.router_pid() and self.worker_pids(), 10), \
            "router or workers not found under launcher %d: %s" % (self.pid, self.tree())
        return self

    def wait_exit(self, timeout=STOP_TIMEOUT):
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None

    def leftovers(self):
        """Live processes of every group and tree seen (should be none)."""
        left = set(p for p in self.seen
                   if is_running(p) and "mephisto-router" in cmdline_text(p))
        for g in self.pgids:
            # ours: the launcher, a pid seen in its tree, or a router process
            # (a worker respawned since); not a stranger reusing the number
            left.update(p for p in group_members(g)
                        if p == self.pid or p in self.seen
                        or "mephisto-router" in cmdline_text(p))
        if self.proc is not None and self.proc.poll() is None:
            left.add(self.pid)
        return sorted(left)

    def describe(self, pids):
        return ["%d: %s" % (p, cmdline_text(p)) for p in pids]

    def cleanup(self):
        """SIGKILL whatever is left, delete the uploads; returns survivors."""
        if self.proc is not None:
            if self.proc.poll() is None:
                with contextlib.suppress(OSError):
                    self.tree()
            for g in sorted(self.pgids):
                # a group id is only reused once every member is gone: only
                # kill a group that still holds one of ours
                if any(p == g or p in self.seen for p in group_members(g)):
                    with contextlib.suppress(OSError):
                        os.killpg(g, signal.SIGKILL)
            for p in sorted(self.seen):
                if is_running(p) and "mephisto-router" in cmdline_text(p):
                    with contextlib.suppress(OSError):
                        os.kill(p, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=5)
            self._log.close()
        for f in self.uploads + stored_uploads(self.payloads):
            with contextlib.suppress(OSError):
                os.unlink(f)
        wait_until(lambda: not self.leftovers(), 5)
        return self.leftovers()

    # -- endpoints, as LocalArchitect computes them (hostname localhost)
    @property
    def url(self):
        return "http://localhost:%d" % self.port

    @property
    def ws_url(self):
        return "ws://localhost:%d/" % self.port


STORED_NAME = re.compile(r"^mr-[0-9a-f]{32}$")


def stored_uploads(payloads):
    """Files in /tmp/ the router stored (its names: mr- and 32 hex digits)
    holding one of payloads: a test that failed before it learnt the stored
    name still leaves nothing in /tmp/."""
    if not payloads:
        return []
    sizes = set(len(p) for p in payloads)
    out = []
    with contextlib.suppress(OSError):
        for name in os.listdir("/tmp"):
            path = os.path.join("/tmp", name)
            if not STORED_NAME.match(name) or os.path.islink(path):
                continue
            with contextlib.suppress(OSError):
                if os.path.isfile(path) and os.path.getsize(path) in sizes:
                    with open(path, "rb") as f:
                        if f.read() in payloads:
                            out.append(path)
    return out


class BrowserSide:
    """What mephisto_fakes.FakeBrowser needs of a router: url and ws()."""

    def __init__(self, launcher):
        self.url = launcher.url
        self.ws_url = launcher.ws_url
        self.clients = []

    def ws(self, **kw):
        c = WSClient(self.ws_url, **kw)
        self.clients.append(c)
        return c

    def close(self):
        for c in self.clients:
            with contextlib.suppress(Exception):
                c.abort()


def get(url, timeout=HTTP_TIMEOUT):
    with requests.Session() as s:
        s.trust_env = False
        return s.get(url, timeout=timeout, headers={"Connection": "close"},
                     allow_redirects=False)


@pytest.fixture
def launchers(tmp_path):
    """Factory of Launcher objects; all killed and checked at teardown."""
    require_binary()
    made = []

    def make(kind, **kw):
        sub = tmp_path / ("l%d" % len(made))
        sub.mkdir()
        ln = Launcher(kind, sub, **kw)
        made.append(ln)
        return ln
    yield make
    survivors = []
    for ln in made:
        try:
            survivors += ln.describe(ln.cleanup())
        except Exception as e:  # go on killing the others
            survivors.append("cleanup of launcher %s failed: %r" % (ln.kind, e))
    assert not survivors, "processes survived the teardown SIGKILL: %s" % survivors


def stop_and_check(ln, sig=signal.SIGTERM, group=False):
    """Signal the launcher (or its group), then: exit status, no process left,
    port free. Returns the exit status."""
    ln.tree()
    before = sorted(ln.seen)
    if group:
        os.killpg(ln.pid, sig)
    else:
        os.kill(ln.pid, sig)
    rc = ln.wait_exit()
    assert rc is not None, "launcher still running %.0f s after %s\n%s" % (
        STOP_TIMEOUT, signal.Signals(sig).name, ln.log())
    left = wait_gone(ln)
    assert not left, "left behind after %s (tree was %s): %s\n%s" % (
        signal.Signals(sig).name, before, ln.describe(left), ln.log())
    assert wait_until(lambda: port_free(ln.port), 5), \
        "port %d still taken after the launcher exited" % ln.port
    return rc


def wait_gone(ln, timeout=GONE_TIMEOUT):
    deadline = time.monotonic() + timeout
    for _ in range(int(timeout / 0.05) + 50):
        if not ln.leftovers() or time.monotonic() >= deadline:
            break
        time.sleep(0.05)
    return ln.leftovers()


# --------------------------------------------------------------------------
# the tests

@pytest.mark.parametrize("kind", KINDS)
def test_localarchitect_lifecycle(kind, launchers):
    """A whole task run: folder copied twice, npm install (node), launcher
    started with PORT, backend on ws://localhost:PORT/, an agent registered,
    live updates both ways, an upload read from /tmp/, SIGTERM, nothing left."""
    ln = launchers(kind)
    assert not (ln.dir / "mephisto-router.db").exists()
    ln.start().wait_alive()

    # the task page Mephisto expects the folder to serve
    page = get(ln.url + "/")
    assert page.status_code == 200
    assert b'src="wrap_crowd_source.js"' in page.content and \
        b'src="bundle.js"' in page.content, page.text[:500]
    assert get(ln.url + "/bundle.js").content == BUNDLE_JS
    assert get(ln.url + "/wrap_crowd_source.js").content == WRAP_JS
    assert get(ln.url + "/task_config.json").json() == TASK_CONFIG
    # state in the run folder, nowhere else
    assert (ln.dir / "mephisto-router.db").exists()
    assert not (ln.router_dir / "mephisto-router.db").exists()
    assert not (LAUNCHER_DIR / "mephisto-router.db").exists()

    side = BrowserSide(ln)
    backend = FakeBackend(ln.ws_url, poll_interval=1.0, name="backend-" + kind)
    try:
        backend.connect()
        # the backend is the channel: statuses come back
        assert backend.statuses() == {}

        # an agent registers (mephisto-task's POST /request_agent)
        browser = FakeBrowser(side, connect=False)
        r = browser.request_agent()
        assert r.status_code == 200, r.text
        details = r.json()
        assert details["packet_type"] == "agent_details"
        reg = backend.wait_for(of_type("register_agent"), what="register_agent")
        assert details["data"]["request_id"] == reg["data"]["request_id"]
        agent_id = details["data"]["agent_id"]

        # its socket: alive, then live updates both ways
        browser.agent_id = agent_id
        browser.connect()
        assert browser.alive()["data"]["status"] == "none"
        browser.send_packet("mephisto_bound_live_update", {"text": "from the agent"})
        up = backend.wait_for(of_type("mephisto_bound_live_update", agent_id),
                              what="agent's live update")
        assert up["data"] == {"text": "from the agent"}
        backend.send(backend_packet("client_bound_live_update", agent_id,
                                    {"text": "from the backend"}))
        down = browser.recv_until(of_type("client_bound_live_update", agent_id),
                                  what="backend's live update")
        assert down["data"] == {"text": "from the backend"}
        hb = browser.heartbeat()
        assert isinstance(hb["data"].get("last_mephisto_ping"), (int, float))

        # a submission with a file; LocalArchitect.download_file copies
        # /tmp/<filename> (the stored name the backend got)
        content = b"upload " + uuid.uuid4().hex.encode() + b"\n" + bytes(range(256))
        ln.payloads.append(content)
        r = browser.submit_task_multipart(
            json.dumps({"answer": 4}),
            files=[("upload", "answer notes.bin", content, "application/octet-stream")])
        assert r.status_code == 200, r.text
        assert r.json() == {"status": "Submitted!"}
        unit = backend.wait_for(of_type("submit_unit", agent_id), what="submit_unit")
        files = unit["data"]["files"]
        assert len(files) == 1, files
        stored = files[0]["filename"]
        ln.uploads.append(os.path.join("/tmp/", stored))
        assert "/" not in stored and stored not in ("", ".", "..")
        assert files[0]["originalname"] == "answer notes.bin"
        assert unit["data"]["answer"] == 4
        save_dir = ln.tmp / "downloads"
        save_dir.mkdir()
        shutil.copy2(os.path.join("/tmp/", stored), str(save_dir / stored))
        assert (save_dir / stored).read_bytes() == content
        assert backend.problems == [] and browser.problems == [], \
            backend.problems + browser.problems
    finally:
        backend.stop()
        side.close()

    # LocalArchitect.shutdown(): SIGTERM to the launcher's pid, wait()
    rc = stop_and_check(ln, signal.SIGTERM)
    assert rc == 0, "launcher exit status %s after SIGTERM\n%s" % (rc, ln.log())
    log = ln.log()
    assert "draining" in log and AGAIN not in log, log


@pytest.mark.parametrize("kind", KINDS)
def test_binary_not_found(kind, launchers, tmp_path):
    """Neither MEPHISTO_ROUTER_BIN nor PATH: one line naming both, exit != 0;
    a MEPHISTO_ROUTER_BIN that is not a program: one line naming it."""
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    ln = launchers(kind, run_npm=False)
    interpreter = require_tool("node") if kind == "node" else PYTHON
    script = "server.js" if kind == "node" else "app.py"
    cases = [
        ({"MEPHISTO_ROUTER_BIN": None, "PATH": str(empty)},
         ("MEPHISTO_ROUTER_BIN", "PATH")),
        ({"MEPHISTO_ROUTER_BIN": "", "PATH": str(empty)},
         ("MEPHISTO_ROUTER_BIN", "PATH")),
        ({"MEPHISTO_ROUTER_BIN": str(empty / "no-such-router")},
         ("MEPHISTO_ROUTER_BIN=%s" % (empty / "no-such-router"),)),
        ({"MEPHISTO_ROUTER_BIN": str(empty)},   # a directory
         ("MEPHISTO_ROUTER_BIN=%s" % empty,)),
    ]
    for env_change, needles in cases:
        env = dict(ln.env)
        for k, v in env_change.items():
            if v is None:
                env.pop(k, None)
            else:
                env[k] = v
        try:
            r = subprocess.run([interpreter, script], cwd=str(ln.dir), env=env,
                               stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, timeout=20,
                               start_new_session=True)
        except subprocess.TimeoutExpired:
            pytest.fail("launcher did not exit within 20 s with %s" % env_change)
        err = r.stderr.decode("utf-8", "replace")
        assert r.returncode != 0, (env_change, err)
        lines = err.splitlines()
        assert len(lines) == 1, "expected one line on stderr with %s, got:\n%s" % (
            env_change, err)
        assert lines[0].startswith("mephisto-router launcher: "), lines[0]
        for n in needles:
            assert n in lines[0], (n, lines[0])
        assert r.stdout == b""
    assert not ln.leftovers()


@pytest.mark.parametrize("kind", KINDS)
def test_binary_found_on_path(kind, launchers, tmp_path):
    """Without MEPHISTO_ROUTER_BIN the launcher runs mephisto-router from
    PATH (where `make install` puts it)."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    os.symlink(router_binary(), str(bindir / "mephisto-router"))
    path = os.pathsep.join([str(bindir), os.environ.get("PATH", "/usr/bin:/bin")])
    ln = launchers(kind, env={"MEPHISTO_ROUTER_BIN": None, "PATH": path})
    ln.start().wait_alive()
    assert cmdline_text(ln.router_pid()).split()[0] == str(bindir / "mephisto-router")
    assert stop_and_check(ln, signal.SIGTERM) == 0


@pytest.mark.parametrize("target", ("group", "launcher"))
@pytest.mark.parametrize("kind", KINDS)
def test_sigkill_of_launcher(kind, target, launchers):
    """SIGKILL of the launcher's whole process group, or of the launcher
    alone, leaves no process and frees the port."""
    ln = launchers(kind)
    ln.start().wait_alive()
    tree = ln.tree()
    assert len(tree) >= 2, tree
    if target == "group":
        os.killpg(ln.pid, signal.SIGKILL)
    else:
        os.kill(ln.pid, signal.SIGKILL)
    assert ln.wait_exit(5) == -signal.SIGKILL
    left = wait_gone(ln)
    assert not left, "left behind after SIGKILL of the %s: %s\n%s" % (
        target, ln.describe(left), ln.log())
    assert wait_until(lambda: port_free(ln.port), 5), "port %d still taken" % ln.port
    if kind == "flask":
        # one parent-death SIGTERM: the router drains and stops cleanly.
        # (Node's launcher dies thread by thread and the kernel repeats the
        # signal at each; the router then stops at once, and may even be
        # killed by a late SIGTERM during its final cleanup: see
        # dist/mephisto/server.js.)
        assert "draining" in ln.log() and "stopped" in ln.log(), ln.log()


@pytest.mark.parametrize("kind", KINDS)
def test_signals_and_exit_status(kind, launchers):
    """SIGINT and a group-wide SIGTERM drain the router once (exit 0); SIGHUP
    reaches the router and leaves it running; the router's own exit status
    and signal deaths (128 + N) come out of the launcher."""
    # SIGHUP is passed on (the embedded default has no file to re-read),
    # then SIGINT stops it
    ln = launchers(kind)
    ln.start().wait_alive()
    os.kill(ln.pid, signal.SIGHUP)
    assert wait_until(lambda: "SIGHUP" in ln.log(), 5), ln.log()
    assert ln.proc.poll() is None
    assert get(ln.url + "/is_alive").status_code == 200
    assert stop_and_check(ln, signal.SIGINT) == 0
    assert AGAIN not in ln.log(), ln.log()

    # SIGTERM to the launcher's whole group reaches the router once
    ln = launchers(kind)
    ln.start().wait_alive()
    assert stop_and_check(ln, signal.SIGTERM, group=True) == 0
    assert "draining" in ln.log() and AGAIN not in ln.log(), ln.log()

    # the router's exit status: 2 when the port is taken
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as busy:
        busy.bind(("0.0.0.0", 0))
        busy.listen(1)
        ln = launchers(kind, port=busy.getsockname()[1])
        ln.start()
        rc = ln.wait_exit(15)
        assert rc == 2, "exit status %s with the port taken\n%s" % (rc, ln.log())
        assert "cannot listen" in ln.log(), ln.log()
    assert not wait_gone(ln)

    # a router killed by signal N: the launcher exits 128 + N
    ln = launchers(kind)
    ln.start().wait_alive()
    rp = ln.router_pid()
    ln.tree()
    os.kill(rp, signal.SIGKILL)
    rc = ln.wait_exit(10)
    assert rc == 128 + signal.SIGKILL, "exit status %s\n%s" % (rc, ln.log())
    assert not wait_gone(ln), ln.describe(ln.leftovers())
