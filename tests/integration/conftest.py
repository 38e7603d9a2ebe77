"""Fixtures and helpers for the mephisto-router integration tests.

The tests start the real binary (env MEPHISTO_ROUTER_BIN, default
<repo>/build/mephisto-router) in its own session, with a temporary config on a
free port of 127.0.0.1, and talk to it over real sockets.

Run with Debian's Python:  /usr/bin/python3 -m pytest tests/integration
(python3-pytest, python3-requests, python3-websockets 10.x).
"""

import asyncio
import contextlib
import http.client
import itertools
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
import websockets
import websockets.exceptions

TESTS = Path(__file__).resolve().parents[1]
if str(TESTS) not in sys.path:
    sys.path.insert(0, str(TESTS))  # tests/proclib.py, shared by the suites

# the /proc readers, also imported from here by the tests
from proclib import (children_of, group_members, is_running,  # noqa: E402,F401
                     pid_holding_inode, read_cmdline, read_stat,
                     server_socket_inode)

REPO = TESTS.parent
DEFAULT_BIN = REPO / "build" / "mephisto-router"

START_TIMEOUT = 10.0  # /is_alive must answer within this many seconds
HTTP_TIMEOUT = 5.0
WS_TIMEOUT = 5.0
LOG_TAIL_LINES = 60

_router_ids = itertools.count(1)

# sanitizer reports (ASan/UBSan/LSan builds) in a log or on stderr fail the test
SANITIZER_MARKERS = ("ERROR: AddressSanitizer", "ERROR: LeakSanitizer",
                     "runtime error:", "WARNING: AddressSanitizer")



def miss_delay(attempt):
    """Seconds between attempts to land a connection on a chosen worker:
    which worker accepts is the kernel's choice (the first free one), so a
    worker still starting or busy (ASan) needs time, not more attempts."""
    return min(0.2, 0.005 * (attempt + 1))


def miss_pause(attempt):
    time.sleep(miss_delay(attempt))

def sanitizer_report(text):
    """The first lines of a sanitizer report found in text, or None."""
    for marker in SANITIZER_MARKERS:
        i = text.find(marker)
        if i >= 0:
            start = text.rfind("\n", 0, i) + 1
            return "\n".join(text[start:].splitlines()[:40])
    return None


# --------------------------------------------------------------------------
# worker-death guard
#
# The supervisor logs every worker that ends. A worker the test did not kill
# on purpose must never end: a crash, an exit on an error or a broken IPC
# stream is a router bug, even when the test's own assertions pass (the
# respawn hides it). The router fixture fails the test on any such line.
# A test that kills a worker on purpose says so, either by killing it
# through Router.kill_worker(slot, sig) or, when something else ends it (the
# supervisor replacing a stalled worker, say), with
# Router.expect_worker_death(slot, sig) beforehand. Each declaration excuses
# exactly one death of that slot by that signal (sig=None: by any cause).
# A supervisor that ends by a signal other than SIGKILL (the only signal a
# test or an operator uses to kill it: it handles SIGTERM/SIGINT/SIGHUP) is
# a crash too.

# "worker 1 (uptime 3.2 s) killed by signal 11 (Segmentation fault); restarting it in 0.10 s"
WORKER_DEATH_RE = re.compile(
    r"supervisor: (worker (\d+) \(uptime [^)]*\) (.+?); restarting it in .*)$")
# "worker 1 (pid 123): broken IPC (why); restarting it"
WORKER_BROKEN_RE = re.compile(
    r"supervisor: (worker (\d+) \(pid \d+\): broken IPC .*)$")
# "worker 1 exited with status 2: it cannot work with this configuration; ..."
WORKER_CONFIG_EXIT_RE = re.compile(
    r"supervisor: (worker (\d+) (.+?): it cannot work with this configuration.*)$")
# shutdown and retiring exits, logged at info without "restarting": exit 0,
# or SIGKILL from the supervisor's own drain timeout, are the normal ends
WORKER_QUIET_EXIT_RE = re.compile(
    r"supervisor: (worker (\d+) (exited with status \d+|killed by signal \d+ "
    r"\([^)]*\)|ended \(status [^)]*\)))$")
SIGNAL_IN_HOW_RE = re.compile(r"killed by signal (\d+)")
STATUS_IN_HOW_RE = re.compile(r"exited with status (\d+)")


def worker_ends(log_text):
    """The worker ends the supervisor logged, in order:
    [(kind, slot, signum or None, line)], kind one of "death" (restarted),
    "broken" (broken IPC), "config" (exit 2, not restarted), "quiet"
    (a shutdown or retiring exit)."""
    out = []
    for line in log_text.splitlines():
        line = line.rstrip()
        for kind, rx in (("death", WORKER_DEATH_RE), ("broken", WORKER_BROKEN_RE),
                         ("config", WORKER_CONFIG_EXIT_RE),
                         ("quiet", WORKER_QUIET_EXIT_RE)):
            m = rx.search(line)
            if m:
                sm = SIGNAL_IN_HOW_RE.search(m.group(1))
                out.append((kind, int(m.group(2)),
                            int(sm.group(1)) if sm else None, line))
                break
    return out


def unexpected_worker_ends(log_text, intended):
    """The log lines of worker ends not covered by intended, a list of
    (slot, signum or None) declarations, each covering one death."""
    left = list(intended)
    bad = []
    for kind, slot, signum, line in worker_ends(log_text):
        if kind == "quiet":
            st = STATUS_IN_HOW_RE.search(line)
            if st and int(st.group(1)) == 0:
                continue
            if signum == signal.SIGKILL:
                continue  # the supervisor's drain timeout
            bad.append(line)
            continue
        if kind == "broken":
            bad.append(line)  # never intended: our own worker sent garbage
            continue
        for i, (s, sig) in enumerate(left):
            if s == slot and (sig is None or sig == signum):
                del left[i]
                break
        else:
            bad.append(line)
    return bad


def router_binary():
    # absolute: the router runs with its own cwd
    return os.path.abspath(os.environ.get("MEPHISTO_ROUTER_BIN") or str(DEFAULT_BIN))


def require_binary():
    path = router_binary()
    if not (os.path.isfile(path) and os.access(path, os.X_OK)):
        pytest.fail("router binary not found or not executable: %s "
                    "(build it with `make`, or set MEPHISTO_ROUTER_BIN)" % path,
                    pytrace=False)
    return path


def base_env(**extra):
    """The environment for the router: ours without PORT, plus extra."""
    env = dict(os.environ)
    env.pop("PORT", None)
    for k, v in extra.items():
        if v is None:
            env.pop(k, None)
        else:
            env[k] = str(v)
    return env


# --------------------------------------------------------------------------
# ports, processes (the /proc readers are tests/proclib.py's)

def free_port():
    """A currently free TCP port on 127.0.0.1."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def worker_slot(pid):
    """The N of a `... --worker N` cmdline, or None."""
    args = read_cmdline(pid)
    if len(args) >= 2 and args[-2] == "--worker":
        try:
            return int(args[-1])
        except ValueError:
            return None
    return None


def wait_until(pred, timeout, interval=0.05, what="condition"):
    """Poll pred() until truthy (returned) or timeout (returns last value)."""
    deadline = time.monotonic() + timeout
    max_iter = int(timeout / interval) + 100
    value = None
    for _ in range(max_iter):
        value = pred()
        if value:
            return value
        if time.monotonic() >= deadline:
            break
        time.sleep(interval)
    return value


# --------------------------------------------------------------------------
# HTTP

def http_get(url, **kw):
    """GET on a NEW connection (fresh session, Connection: close), ignoring
    proxy settings from the environment."""
    headers = {"Connection": "close"}
    headers.update(kw.pop("headers", {}))
    kw.setdefault("timeout", HTTP_TIMEOUT)
    kw.setdefault("allow_redirects", False)
    with requests.Session() as s:
        s.trust_env = False
        return s.get(url, headers=headers, **kw)


def keepalive_connection(port, path="/is_alive"):
    """An http.client connection that did one request and stays open idle."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=HTTP_TIMEOUT)
    conn.request("GET", path)
    resp = conn.getresponse()
    resp.read()
    assert resp.status == 200, resp.status
    return conn


# --------------------------------------------------------------------------
# WebSocket (websockets 10.x asyncio client, driven on a private loop)

class WSClient:
    """A synchronous wrapper around a websockets 10.x client connection.

    Every client has its own event loop, run only while one of its methods
    runs; keepalive pings of the library are off so idle time between calls
    never closes the connection."""

    def __init__(self, url, timeout=WS_TIMEOUT, **kw):
        kw.setdefault("ping_interval", None)
        kw.setdefault("close_timeout", 2)
        kw.setdefault("compression", None)
        kw.setdefault("open_timeout", timeout)
        self.url = url
        self.loop = asyncio.new_event_loop()
        self.ws = None

        async def _open():
            return await websockets.connect(url, **kw)
        try:
            self.ws = self._run(_open(), timeout + 1)
        except BaseException:
            self.loop.close()
            raise

    def _run(self, coro, timeout):
        return self.loop.run_until_complete(asyncio.wait_for(coro, timeout))

    @property
    def response_headers(self):
        return self.ws.response_headers

    @property
    def header_worker(self):
        v = self.ws.response_headers.get("X-Router-Worker")
        return int(v) if v is not None and v.strip().isdigit() else None

    @property
    def local_port(self):
        return self.ws.local_address[1]

    def send(self, text, timeout=WS_TIMEOUT):
        self._run(self.ws.send(text), timeout)

    def recv(self, timeout=WS_TIMEOUT):
        return self._run(self.ws.recv(), timeout)

    def ping(self, timeout=WS_TIMEOUT):
        """Send a ping and wait for its pong; raises on failure."""
        async def _ping():
            waiter = await self.ws.ping()
            await waiter
        self._run(_ping(), timeout)

    def ping_ok(self, timeout=WS_TIMEOUT):
        try:
            self.ping(timeout)
            return True
        except (asyncio.TimeoutError, websockets.exceptions.ConnectionClosed,
                OSError):
            return False

    def wait_closed(self, timeout=WS_TIMEOUT):
        """Wait until the connection is closed (reading and discarding any
        message); returns the close code (1006 for a dropped TCP) or None if
        still open after timeout."""
        async def _drain():
            try:
                while True:
                    await self.ws.recv()
            except websockets.exceptions.ConnectionClosed:
                pass
            await self.ws.wait_closed()
        try:
            self._run(_drain(), timeout)
        except asyncio.TimeoutError:
            return None
        return self.ws.close_code

    @property
    def is_open(self):
        return self.ws is not None and self.ws.open

    def abort(self):
        """Drop the connection without a closing handshake; frees the loop."""
        if self.loop.is_closed():
            return
        try:
            if self.ws is not None and self.ws.transport is not None:
                self.ws.transport.abort()
            # let the protocol tasks see the abort and finish
            with contextlib.suppress(Exception):
                self.loop.run_until_complete(asyncio.sleep(0.01))
            pending = [t for t in asyncio.all_tasks(self.loop) if not t.done()]
            for t in pending:
                t.cancel()
            if pending:
                with contextlib.suppress(BaseException):
                    self.loop.run_until_complete(asyncio.wait(pending, timeout=1))
        finally:
            self.loop.close()

    def close(self, timeout=3):
        if self.loop.is_closed():
            return
        with contextlib.suppress(Exception):
            self._run(self.ws.close(), timeout)
        self.abort()


# --------------------------------------------------------------------------
# the router

def static_tree(root):
    """Fill root with the static files the tests expect; returns a dict
    relative path -> bytes."""
    files = {
        "index.html": b"<!doctype html><html><head><title>mephisto-router test"
                      b"</title></head><body>index-marker-7f3a</body></html>\n",
        "style.css": b"body { color: #123456; } /* css-marker */\n",
        "app.js": b"console.log('js-marker');\n",
        "data.json": b'{"json": "marker", "n": 42}\n',
        "data.qzx9": bytes(range(256)) + b"xyz-marker",
        "sub/page.html": b"<!doctype html><p>sub-marker</p>\n",
        "sub/deeper/note.txt": b"deep-marker\n",
    }
    for rel, content in files.items():
        p = Path(root) / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(content)
    return files


class Router:
    """One router process tree, started from a temporary config file.

    use_config=False starts the binary without --config (embedded default),
    in cwd."""

    def __init__(self, base_dir, keys=None, env=None, use_config=True,
                 cwd=None, extra_args=()):
        self.id = next(_router_ids)
        self.dir = Path(base_dir) / ("router%d" % self.id)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.static_dir = self.dir / "static"
        self.static_files = static_tree(self.static_dir)
        (self.dir / "uploads").mkdir(exist_ok=True)
        self.config_path = self.dir / "router.conf"
        self.log_path = self.dir / "router.log"
        self.port = free_port()
        self.keys = {
            "listen_address": "127.0.0.1",
            "port": self.port,
            "workers": 2,
            "static_dir": str(self.static_dir),
            "state_path": str(self.dir / "state.db"),
            "upload_dir": str(self.dir / "uploads") + "/",
            "shutdown_timeout": 3,
            # routers of concurrent tests would fight over the default port
            "metrics_listen": "none",
        }
        if not use_config:
            self.keys = {}
        if keys:
            self.keys.update(keys)
        self.keys = {k: v for k, v in self.keys.items() if v is not None}
        if "port" in self.keys:
            self.port = int(self.keys["port"])
        self.env = base_env(**(env or {}))
        if self.env.get("PORT"):
            # env PORT overrides the config (and the embedded default)
            self.port = int(self.env["PORT"])
        elif not use_config:
            self.port = 3000
        self.use_config = use_config
        self.cwd = str(cwd) if cwd is not None else str(self.dir)
        self.extra_args = list(extra_args)
        self.proc = None
        self.pgid = None
        self._logf = None
        self.seen_pids = set()
        self.ws_clients = []
        self.intended_worker_deaths = []  # [(slot, signum or None)]
        self._guard_snapshot = None  # (supervisor returncode, log) at cleanup
        if use_config:
            self.write_config()

    # -- config
    def write_config(self, text=None, **keys):
        """Rewrite the config file: from text verbatim, or from self.keys
        updated with keys (a None value removes a key)."""
        if text is None:
            for k, v in keys.items():
                if v is None:
                    self.keys.pop(k, None)
                else:
                    self.keys[k] = v
            text = "# written by tests/integration/conftest.py\n" + "".join(
                "%s = %s\n" % (k, v) for k, v in self.keys.items())
        tmp = self.config_path.with_suffix(".tmp")
        tmp.write_text(text)
        os.replace(tmp, self.config_path)

    @property
    def expected_workers(self):
        try:
            n = int(str(self.keys.get("workers", 0)))
        except ValueError:
            return None
        return n if n > 0 else None

    # -- lifecycle
    def argv(self):
        args = [require_binary()]
        if self.use_config:
            args += ["--config", str(self.config_path)]
        return args + self.extra_args

    def start(self, wait=True, workers=None):
        assert self.proc is None, "router already started"
        self._logf = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            self.argv(), stdin=subprocess.DEVNULL, stdout=self._logf,
            stderr=subprocess.STDOUT, env=self.env, cwd=self.cwd,
            start_new_session=True)
        self.pgid = self.proc.pid  # new session: pgid == sid == pid
        if wait:
            self.wait_alive()
            n = workers if workers is not None else self.expected_workers
            if n is not None:
                self.wait_workers(n)
            else:
                self.wait_workers_at_least(1)
        return self

    @property
    def pid(self):
        return self.proc.pid

    @property
    def url(self):
        return "http://127.0.0.1:%d" % self.port

    @property
    def ws_url(self):
        return "ws://127.0.0.1:%d/" % self.port

    def get(self, path, **kw):
        return http_get(self.url + path, **kw)

    def wait_alive(self, timeout=START_TIMEOUT):
        deadline = time.monotonic() + timeout
        last = None
        for _ in range(int(timeout / 0.05) + 50):
            rc = self.proc.poll()
            if rc is not None:
                raise AssertionError(
                    "router exited with %s before answering /is_alive\n%s"
                    % (rc, self.log_tail()))
            try:
                r = self.get("/is_alive", timeout=1)
                if r.status_code == 200:
                    return r
                last = "status %d" % r.status_code
            except requests.RequestException as e:
                last = repr(e)
            if time.monotonic() >= deadline:
                break
            time.sleep(0.05)
        raise AssertionError("router did not answer /is_alive within %.0f s "
                             "(last: %s)\n%s" % (timeout, last, self.log_tail()))

    def worker_pids(self):
        """Pids of the live direct children of the supervisor."""
        pids = children_of(self.pid)
        self.seen_pids.update(pids)
        return pids

    def workers_by_slot(self):
        """{slot: pid} of the children whose cmdline ends with --worker N."""
        out = {}
        for pid in self.worker_pids():
            slot = worker_slot(pid)
            if slot is not None:
                out[slot] = pid
        return out

    def wait_workers(self, n, timeout=10.0):
        """Wait until exactly n children exist, all exec'ed as
        `--worker N` with slots 1..n. Returns {slot: pid}."""
        want = set(range(1, n + 1))

        def ok():
            pids = self.worker_pids()
            by_slot = self.workers_by_slot()
            return len(pids) == n and set(by_slot) == want and by_slot
        got = wait_until(ok, timeout)
        if not got:
            raise AssertionError(
                "expected %d workers (slots %s) within %.0f s; children now: %s\n%s"
                % (n, sorted(want), timeout, self.describe_children(),
                   self.log_tail()))
        return got

    def wait_workers_at_least(self, n, timeout=10.0):
        got = wait_until(lambda: len(self.workers_by_slot()) >= n and
                         self.workers_by_slot(), timeout)
        if not got:
            raise AssertionError("expected at least %d workers; children: %s\n%s"
                                 % (n, self.describe_children(), self.log_tail()))
        return got

    # -- intended worker deaths (the worker-death guard, see worker_ends)
    def expect_worker_death(self, slot, sig=signal.SIGKILL):
        """Declare that the worker in slot will end once, by signal sig
        (None: by any cause), because of something the test does on
        purpose; the guard excuses exactly that one death."""
        self.intended_worker_deaths.append(
            (int(slot), None if sig is None else int(sig)))

    def kill_worker(self, slot, sig=signal.SIGKILL):
        """Send sig (SIGKILL) to the worker in slot, declared as an intended
        death. Returns the pid that was signalled."""
        assert sig not in (signal.SIGSTOP, signal.SIGCONT, signal.SIGTSTP), (
            "kill_worker is for deaths; use stop_worker/resume_worker")
        pid = self.workers_by_slot().get(slot)
        assert pid is not None, "no worker in slot %d: %s" % (
            slot, self.describe_children())
        self.expect_worker_death(slot, sig)
        os.kill(pid, sig)
        return pid

    def stop_worker(self, slot):
        """SIGSTOP the worker in slot (not a death); returns its pid."""
        pid = self.workers_by_slot().get(slot)
        assert pid is not None, "no worker in slot %d" % slot
        os.kill(pid, signal.SIGSTOP)
        return pid

    def resume_worker(self, pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)

    def unexpected_deaths(self):
        """Log lines of worker ends (and a supervisor crash) the test did not
        declare; [] when all is well."""
        if self._guard_snapshot is not None:
            rc, text = self._guard_snapshot
        else:
            rc = self.proc.poll() if self.proc is not None else None
            text = self.log()
        bad = unexpected_worker_ends(text, self.intended_worker_deaths)
        if rc is not None and rc < 0 and -rc != signal.SIGKILL:
            bad.append("supervisor (pid %d) killed by signal %d (%s)" % (
                self.pid, -rc, signal.Signals(-rc).name))
        return bad

    def check_workers(self, settle=0.3):
        """Assert now (inside a test body) that no worker died unexpectedly;
        settle: seconds to let the supervisor log a death that just
        happened."""
        if settle:
            time.sleep(settle)
        bad = self.unexpected_deaths()
        assert not bad, ("router %d: worker(s) ended without the test killing "
                         "them:\n  %s" % (self.id, "\n  ".join(bad)))

    def describe_children(self):
        return ["%d:%s" % (p, " ".join(read_cmdline(p))) for p in children_of(self.pid)]

    def signal(self, sig):
        os.kill(self.pid, sig)

    def stop(self, timeout=None, sig=None):
        """Send sig (SIGTERM) and wait (bounded); returns the exit code, or
        None if it is still running after timeout."""
        if sig is None:
            sig = signal.SIGTERM
        if timeout is None:
            timeout = float(self.keys.get("shutdown_timeout", 5)) + 3
        if self.proc.poll() is not None:
            return self.proc.returncode
        self.signal(sig)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None

    def log(self):
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, n=LOG_TAIL_LINES):
        lines = self.log().splitlines()
        return ("---- router %d log (%s), last %d of %d lines ----\n"
                % (self.id, self.log_path, min(n, len(lines)), len(lines))
                + "\n".join(lines[-n:]))

    def wait_log(self, needle, timeout=3.0, start=0):
        """Wait until needle appears in the log after character offset start."""
        return wait_until(lambda: needle in self.log()[start:], timeout)

    # -- WebSockets
    def ws(self, **kw):
        c = WSClient(self.ws_url, **kw)
        self.ws_clients.append(c)
        return c

    def ws_worker(self, client):
        """The slot of the worker holding client's connection, found through
        /proc (the router-side socket inode among the workers' fds); checked
        against the X-Router-Worker header of the upgrade answer if any."""
        inode = wait_until(lambda: server_socket_inode(self.port, client.local_port),
                           2.0)
        assert inode, "router-side socket of ws client port %d not found" % client.local_port
        by_slot = self.workers_by_slot()
        pid = pid_holding_inode(list(by_slot.values()), inode)
        assert pid is not None, "no worker holds the ws socket; workers %s" % by_slot
        slot = [s for s, p in by_slot.items() if p == pid][0]
        hdr = client.header_worker
        assert hdr is None or hdr == slot, (
            "X-Router-Worker %s on the upgrade answer, but worker %d (pid %d) "
            "holds the socket" % (hdr, slot, pid))
        return slot

    def ws_on_slots(self, slots, max_attempts=300):
        """Open WebSockets until one is held by each slot in slots; returns
        {slot: client}. The others are closed."""
        found = {}
        deadline = time.monotonic() + 15
        for attempt in range(max_attempts):
            c = self.ws()
            s = self.ws_worker(c)
            if s in slots and s not in found:
                found[s] = c
            else:
                c.close()
            if set(found) == set(slots) or time.monotonic() > deadline:
                break
            miss_pause(attempt)
        assert set(found) == set(slots), (
            "could not get a WebSocket on each of slots %s in %d attempts "
            "(got %s)\n%s" % (sorted(slots), max_attempts, sorted(found),
                              self.log_tail()))
        return found

    # -- teardown
    def cleanup(self):
        """Kill whatever is left with SIGKILL (whole group) and return the
        pids that still survive after that (should be empty)."""
        for c in self.ws_clients:
            with contextlib.suppress(Exception):
                c.abort()
        if self.proc is None:
            return []
        if self._guard_snapshot is None:
            # what the guard judges: the run up to here, not our own SIGKILL
            self._guard_snapshot = (self.proc.poll(), self.log())
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pgid, signal.SIGKILL)
        # workers that might have left the group: kill known ones still alive
        for pid in self.seen_pids:
            if is_running(pid) and worker_slot(pid) is not None and \
                    read_stat(pid) and read_stat(pid)[3] != self.pgid:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=5)
        if self._logf:
            self._logf.close()

        def survivors():
            left = set(group_members(self.pgid))
            left |= {p for p in self.seen_pids
                     if is_running(p) and worker_slot(p) is not None}
            return sorted(left)
        wait_until(lambda: not survivors(), 3.0)
        return survivors()


# --------------------------------------------------------------------------
# command-line runs (bounded, group killed)

class CliResult:
    def __init__(self, returncode, stdout, stderr, timed_out):
        self.returncode = returncode
        self.stdout = stdout
        self.stderr = stderr
        self.timed_out = timed_out

    def __repr__(self):
        return ("CliResult(rc=%r, timed_out=%r)\n--- stdout ---\n%s\n"
                "--- stderr ---\n%s" % (self.returncode, self.timed_out,
                                       self.stdout, self.stderr))


def run_cli(args, timeout=10.0, env=None, cwd=None, pgids=None):
    """Run the binary with args; never more than timeout seconds. On timeout
    the whole process group is killed and timed_out is True."""
    proc = subprocess.Popen(
        [require_binary()] + list(args), stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        env=env if env is not None else base_env(), cwd=cwd,
        start_new_session=True)
    if pgids is not None:
        pgids.append(proc.pid)
    timed_out = False
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        timed_out = True
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate(timeout=5)
    finally:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
    return CliResult(proc.returncode, out.decode(errors="replace"),
                     err.decode(errors="replace"), timed_out)


# --------------------------------------------------------------------------
# fixtures

@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """On failure, attach the log tail of every router of the test."""
    outcome = yield
    report = outcome.get_result()
    if call.when == "call":
        # the worker-death guard does not fail the teardown of a test that
        # already failed (or xfailed): its deaths go in that report
        item._call_failed = report.failed or hasattr(report, "wasxfail")
    if report.failed:
        for r in getattr(item, "_routers", []):
            report.sections.append(("router %d log" % r.id, r.log_tail()))
            if call.when == "call" and r.proc is not None:
                bad = r.unexpected_deaths()
                if bad:
                    report.sections.append(("router %d: unexpected worker deaths"
                                            % r.id, "\n".join(bad)))


@pytest.fixture
def router_factory(request, tmp_path):
    """make_router(start=True, workers=None, env=None, use_config=True,
    cwd=None, **keys) -> Router. Everything is killed at teardown, and the
    teardown fails if any process of a router's group survives, if a
    sanitizer reported, or if a worker ended that the test did not kill on
    purpose (Router.kill_worker / Router.expect_worker_death; see
    worker_ends)."""
    routers = []
    request.node._routers = routers

    def make(start=True, env=None, use_config=True, cwd=None, extra_args=(),
             wait_workers=None, **keys):
        r = Router(tmp_path, keys=keys, env=env, use_config=use_config,
                   cwd=cwd, extra_args=extra_args)
        routers.append(r)
        if start:
            r.start(workers=wait_workers)
        return r

    yield make
    problems = []
    for r in routers:
        left = r.cleanup()
        if left:
            problems.append("router %d: processes survived SIGKILL of the group: %s"
                            % (r.id, left))
        rep = sanitizer_report(r.log())
        if rep:
            problems.append("router %d: sanitizer report in %s:\n%s"
                            % (r.id, r.log_path, rep))
        bad = r.unexpected_deaths() if r.proc is not None else []
        if bad and not getattr(request.node, "_call_failed", False):
            problems.append("router %d: worker(s) ended without the test killing "
                            "them (declare intended kills with r.kill_worker or "
                            "r.expect_worker_death) in %s:\n  %s"
                            % (r.id, r.log_path, "\n  ".join(bad)))
    assert not problems, "\n".join(problems)


@pytest.fixture
def router(router_factory):
    """A started router with the default test config (2 workers)."""
    return router_factory()


@pytest.fixture
def cli(tmp_path):
    """cli(args, timeout=10, env=None, cwd=None) -> CliResult; verifies at
    teardown that nothing of those runs survives."""
    pgids = []

    reports = []

    def run(args, timeout=10.0, env=None, cwd=None):
        res = run_cli(args, timeout=timeout, env=env,
                      cwd=str(cwd) if cwd is not None else str(tmp_path),
                      pgids=pgids)
        rep = sanitizer_report(res.stderr + res.stdout)
        if rep:
            reports.append("%s:\n%s" % (args, rep))
        return res
    yield run
    assert not reports, "sanitizer reports:\n" + "\n".join(reports)
    left = []
    for pgid in pgids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGKILL)
    for pgid in pgids:
        wait_until(lambda: not group_members(pgid), 3.0)
        left += group_members(pgid)
    assert not left, "processes of CLI runs survived: %s" % left
