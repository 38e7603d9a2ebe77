"""Fakes for the protocol tests: a Mephisto backend and mephisto-task
browsers, shaped like the real ones (../../../shared/PROTOCOL.md).

FakeBackend is a `websockets` (asyncio) client running on its own thread and
event loop, like Mephisto's Python backend: default library settings
(permessage-deflate offered, keepalive pings, max_size 1 MiB), `alive` with
subject_id "mephisto" first, `request_statuses` every poll_interval seconds,
`agent_details` (carrying request_id) in answer to `register_agent` and
`submit_onboarding`. Every packet it receives is checked the way the backend
parses packets (packet_type, subject_id and a data object required) plus the
router's own promise (router_outgoing_timestamp, in seconds); violations are
collected in .problems and fail the test at teardown.

FakeBrowser holds one WebSocket (conftest.WSClient, so the router fixture
cleans it up) and does what mephisto-task 2.0.4 does: alive, heartbeats with
client_timestamp, live updates, and the JSON POSTs with the same bodies.
Everything targets 127.0.0.1 and every wait is bounded.
"""

import asyncio
import concurrent.futures
import contextlib
import json
import threading
import time
import uuid

import requests
import websockets
import websockets.exceptions

from conftest import HTTP_TIMEOUT, WS_TIMEOUT, miss_delay, miss_pause

MEPHISTO = "mephisto"
BACKEND_MAX_SIZE = 2 ** 20  # websockets' default max_size, what the backend uses

FINAL_STATUSES = ("completed", "disconnect", "timeout", "partner disconnect",
                  "expired", "returned", "approved", "soft_rejected", "rejected")
LIVE_STATUSES = ("onboarding", "waiting", "in task")

_NOW = object()  # "use the current time" marker


# --------------------------------------------------------------------------
# packets

def backend_packet(packet_type, subject_id, data=None, **extra):
    """A packet as Mephisto's Packet.to_sendable_dict() makes it: every
    field present, the router timestamps null, server_timestamp set."""
    p = {"packet_type": packet_type, "subject_id": subject_id,
         "data": {} if data is None else data,
         "client_timestamp": None, "router_incoming_timestamp": None,
         "router_outgoing_timestamp": None, "server_timestamp": time.time()}
    p.update(extra)
    return p


def browser_packet(packet_type, subject_id, data=None, client_timestamp=_NOW,
                   **extra):
    """A packet as mephisto-task's socket handler makes it."""
    p = {"packet_type": packet_type, "subject_id": subject_id,
         "data": {} if data is None else data}
    if client_timestamp is _NOW:
        p["client_timestamp"] = time.time()
    elif client_timestamp is not None:
        p["client_timestamp"] = client_timestamp
    p.update(extra)
    return p


def parse_packet(text):
    """(object, duplicated top-level keys) of one JSON text."""
    dups = []

    def hook(pairs):
        seen = set()
        for k, _ in pairs:
            if k in seen:
                dups.append(k)
            seen.add(k)
        return dict(pairs)
    return json.loads(text, object_pairs_hook=hook), dups


def is_number(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def is_seconds(v):
    """A float time in seconds since the epoch (not ms), near now."""
    return is_number(v) and abs(v - time.time()) < 3600


def packet_problems(p, where):
    """What is wrong with packet p received from the router (by `where`)."""
    out = []
    if not isinstance(p, dict):
        return ["%s: not a JSON object: %r" % (where, p)]
    if not isinstance(p.get("packet_type"), str):
        out.append("%s: packet_type missing or not a string" % where)
    if not isinstance(p.get("subject_id"), str):
        out.append("%s: subject_id missing or not a string" % where)
    if not isinstance(p.get("data"), dict):
        out.append("%s: data missing or not an object" % where)
    if not is_seconds(p.get("router_outgoing_timestamp")):
        out.append("%s: router_outgoing_timestamp missing or not seconds: %r"
                   % (where, p.get("router_outgoing_timestamp")))
    if out:
        out[-1] += "  (packet: %s)" % short(p)
    return out


def short(p, n=300):
    s = json.dumps(p) if not isinstance(p, str) else p
    return s if len(s) <= n else s[:n] + "...(%d chars)" % len(s)


def of_type(t, subject=None):
    def pred(p):
        return p.get("packet_type") == t and (subject is None or
                                              p.get("subject_id") == subject)
    return pred


# --------------------------------------------------------------------------
# the fake backend

class FakeBackend:
    """A fake Mephisto backend (websockets client on its own thread).

    poll_interval: seconds between request_statuses (None: never).
    answer: answer register_agent/submit_onboarding with agent_details.
    details_delay: seconds before answering.
    details_request_id: put request_id in the answer's data (else only in
      subject_id).
    want_worker: reconnect until the router's X-Router-Worker is this slot.
    """

    def __init__(self, ws_url, poll_interval=4.0, answer=True, details_delay=0.0,
                 details_request_id=True, max_size=BACKEND_MAX_SIZE,
                 want_worker=None, send_alive=True, name="backend",
                 max_attempts=300, compression="deflate", ping_interval=20):
        self.url = ws_url
        self.poll_interval = poll_interval
        self.answer = answer
        self.details_delay = details_delay
        self.details_request_id = details_request_id
        self.max_size = max_size
        self.want_worker = want_worker
        self.send_alive = send_alive
        self.name = name
        self.max_attempts = max_attempts
        self.compression = compression
        self.ping_interval = ping_interval
        self.cond = threading.Condition()
        self.packets = []      # every packet received, in order
        self.problems = []     # protocol violations seen
        self.duplicate_keys = []
        self.sent_details = {}  # request_id -> agent_details we sent
        self.ws = None
        self.worker = None
        self.closed = False
        self.close_code = None
        self.connections = 0
        self._tasks = []
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self._run_loop, name=name,
                                       daemon=True)
        self.thread.start()

    # -- loop plumbing
    def _run_loop(self):
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def _call(self, coro, timeout=WS_TIMEOUT):
        fut = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return fut.result(timeout)
        except concurrent.futures.TimeoutError:
            fut.cancel()
            raise AssertionError("%s: operation timed out after %.1f s"
                                 % (self.name, timeout))

    # -- connection
    def connect(self, timeout=20):
        self._call(self._connect(), timeout)
        return self

    async def _connect(self):
        ws = None
        w = None
        deadline = time.monotonic() + 15
        for attempt in range(self.max_attempts):
            ws = await websockets.connect(
                self.url, max_size=self.max_size, open_timeout=5,
                compression=self.compression, ping_interval=self.ping_interval,
                close_timeout=2)
            v = ws.response_headers.get("X-Router-Worker")
            w = int(v) if v is not None and v.strip().isdigit() else None
            if self.want_worker is None or w == self.want_worker:
                break
            await ws.close()
            ws = None
            if time.monotonic() > deadline:
                break
            await asyncio.sleep(miss_delay(attempt))
        if ws is None:
            raise AssertionError("%s: could not get a connection on worker %s"
                                 % (self.name, self.want_worker))
        with self.cond:
            self.ws = ws
            self.worker = w
            self.closed = False
            self.close_code = None
            self.connections += 1
        self._tasks.append(self.loop.create_task(self._reader(ws)))
        if self.send_alive:
            await ws.send(json.dumps(backend_packet("alive", MEPHISTO)))
        if self.poll_interval:
            self._tasks.append(self.loop.create_task(self._poller(ws)))

    async def _reader(self, ws):
        try:
            async for msg in ws:
                self._on_message(ws, msg)
        except websockets.exceptions.ConnectionClosed:
            pass
        finally:
            with self.cond:
                if ws is self.ws:
                    self.closed = True
                    self.close_code = ws.close_code
                self.cond.notify_all()

    async def _poller(self, ws):
        while True:
            await asyncio.sleep(self.poll_interval)
            if not ws.open:
                return
            try:
                await ws.send(json.dumps(backend_packet("request_statuses",
                                                        MEPHISTO)))
            except websockets.exceptions.ConnectionClosed:
                return

    def _on_message(self, ws, msg):
        if isinstance(msg, bytes):
            with self.cond:
                self.problems.append("%s: binary frame from the router (%d bytes)"
                                     % (self.name, len(msg)))
            return
        try:
            p, dups = parse_packet(msg)
        except ValueError:
            with self.cond:
                self.problems.append("%s: frame is not JSON: %s"
                                     % (self.name, short(msg)))
            return
        probs = packet_problems(p, self.name)
        with self.cond:
            self.problems.extend(probs)
            if dups:
                self.duplicate_keys.append((dups, short(p)))
            if isinstance(p, dict):
                p["_received"] = time.time()
                self.packets.append(p)
            self.cond.notify_all()
        if not isinstance(p, dict):
            return
        t = p.get("packet_type")
        if t in ("register_agent", "submit_onboarding") and self.answer:
            data = p.get("data") if isinstance(p.get("data"), dict) else {}
            rid = data.get("request_id")
            if rid is None and t == "register_agent":
                rid = p.get("subject_id")
            if isinstance(rid, str):
                self._tasks.append(self.loop.create_task(
                    self._answer(ws, t, rid, p)))

    def details_for(self, packet_type, request_id, request):
        """The data of the agent_details answering request (overridable)."""
        data = {"request_id": request_id,
                "agent_id": "agent-" + request_id.replace("-", "")[:12],
                "worker_id": "worker-7", "init_task_data": {"question": "2+2?"}}
        if packet_type == "submit_onboarding":
            data["failed"] = False
        return data

    async def _answer(self, ws, packet_type, request_id, request):
        if self.details_delay:
            await asyncio.sleep(self.details_delay)
        data = self.details_for(packet_type, request_id, request)
        if not self.details_request_id:
            data.pop("request_id", None)
        det = backend_packet("agent_details", request_id, data)
        self.sent_details[request_id] = det
        with contextlib.suppress(websockets.exceptions.ConnectionClosed):
            await ws.send(json.dumps(det))

    # -- API for tests
    @property
    def is_open(self):
        return self.ws is not None and self.ws.open and not self.closed

    def send(self, packet, timeout=WS_TIMEOUT):
        text = packet if isinstance(packet, str) else json.dumps(packet)
        self._call(self.ws.send(text), timeout)

    def ping_ok(self, timeout=WS_TIMEOUT):
        async def _ping():
            waiter = await self.ws.ping()
            await waiter
        try:
            self._call(_ping(), timeout)
            return True
        except (AssertionError, websockets.exceptions.ConnectionClosed, OSError):
            return False

    def received(self, pred=None):
        with self.cond:
            return [p for p in self.packets if pred is None or pred(p)]

    def count(self, pred):
        return len(self.received(pred))

    def wait_for(self, pred, timeout=WS_TIMEOUT, what="packet", start=0):
        """The first packet (from index start) matching pred; fails after
        timeout."""
        deadline = time.monotonic() + timeout
        with self.cond:
            for _ in range(100000):
                for p in self.packets[start:]:
                    if pred(p):
                        return p
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self.cond.wait(min(left, 0.5))
            seen = [short(p, 160) for p in self.packets[-10:]]
        raise AssertionError("%s: no %s within %.1f s; closed=%s code=%s; "
                             "last packets received: %s" % (
                                 self.name, what, timeout, self.closed,
                                 self.close_code, seen))

    def wait_n(self, pred, n, timeout=WS_TIMEOUT, what="packets"):
        deadline = time.monotonic() + timeout
        with self.cond:
            for _ in range(100000):
                got = [p for p in self.packets if pred(p)]
                if len(got) >= n:
                    return got
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self.cond.wait(min(left, 0.5))
        raise AssertionError("%s: %d of %d %s within %.1f s; closed=%s code=%s"
                             % (self.name, len(got), n, what, timeout,
                                self.closed, self.close_code))

    def wait_closed(self, timeout=WS_TIMEOUT):
        deadline = time.monotonic() + timeout
        with self.cond:
            while not self.closed and time.monotonic() < deadline:
                self.cond.wait(min(0.2, max(0.0, deadline - time.monotonic())))
            return self.closed

    def statuses(self, timeout=WS_TIMEOUT):
        """Send request_statuses and return the data of its return_statuses
        (matched by client_timestamp == our server_timestamp)."""
        start = len(self.received())
        req = backend_packet("request_statuses", MEPHISTO)
        st = req["server_timestamp"]
        self.send(req)

        def match(p):
            return (p.get("packet_type") == "return_statuses" and
                    is_number(p.get("client_timestamp")) and
                    abs(p["client_timestamp"] - st) < 1e-3)
        got = self.wait_for(match, timeout, "return_statuses", start=start)
        return got["data"]

    def set_status(self, agent_id, status):
        self.send(backend_packet("update_status", agent_id, {"status": status}))

    def close(self, timeout=3):
        if self.ws is None or self.loop.is_closed():
            return
        with contextlib.suppress(Exception):
            self._call(self.ws.close(), timeout)

    def abort(self):
        """Drop the TCP connection without a closing handshake."""
        if self.ws is None or self.loop.is_closed():
            return

        async def _abort():
            if self.ws.transport is not None:
                self.ws.transport.abort()
            await asyncio.sleep(0.05)
        with contextlib.suppress(Exception):
            self._call(_abort(), 3)

    def stop(self):
        """Close everything and end the thread (idempotent)."""
        if self.loop.is_closed():
            return

        async def _shutdown():
            if self.ws is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(self.ws.close(), 2)
                if self.ws.transport is not None:
                    self.ws.transport.abort()
            for t in self._tasks:
                t.cancel()
            if self._tasks:
                await asyncio.wait(self._tasks, timeout=2)
        with contextlib.suppress(Exception):
            self._call(_shutdown(), 6)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        if not self.thread.is_alive():
            self.loop.close()


# --------------------------------------------------------------------------
# HTTP as mephisto-task does it

def _session():
    s = requests.Session()
    s.trust_env = False
    return s


def post_json(base_url, path, body, params=None, timeout=HTTP_TIMEOUT):
    """POST a JSON body (axios: Content-Type application/json)."""
    with _session() as s:
        return s.post(base_url + path, json=body, params=params,
                      timeout=timeout, headers={"Connection": "close"})


def post_raw(base_url, path, data, content_type="application/json",
             params=None, timeout=HTTP_TIMEOUT):
    with _session() as s:
        return s.post(base_url + path, data=data, params=params, timeout=timeout,
                      headers={"Content-Type": content_type,
                               "Connection": "close"})


def post_multipart(base_url, path, fields, files=(), timeout=HTTP_TIMEOUT):
    """fields: {name: str}; files: [(fieldname, filename, bytes, mimetype)]."""
    multi = [(k, (None, v)) for k, v in fields.items()]
    multi += [(fn, (name, content, mime)) for fn, name, content, mime in files]
    with _session() as s:
        return s.post(base_url + path, files=multi, timeout=timeout,
                      headers={"Connection": "close"})


def get(base_url, path, params=None, timeout=HTTP_TIMEOUT):
    with _session() as s:
        return s.get(base_url + path, params=params, timeout=timeout,
                     headers={"Connection": "close"}, allow_redirects=False)


# --------------------------------------------------------------------------
# the fake browser

class FakeBrowser:
    """One worker's browser: a WebSocket (conftest.WSClient, cleaned up by
    the router fixture) plus mephisto-task's HTTP calls."""

    def __init__(self, router, agent_id=None, want_worker=None, connect=True):
        self.router = router
        self.base = router.url
        self.agent_id = agent_id or "agent-" + uuid.uuid4().hex[:12]
        self.inbox = []
        self.problems = []
        self.duplicate_keys = []
        self.ws = None
        self.worker = None
        if connect:
            self.connect(want_worker)

    # -- WebSocket
    def connect(self, want_worker=None, max_attempts=300):
        c = None
        deadline = time.monotonic() + 15
        for attempt in range(max_attempts):
            c = self.router.ws()
            if want_worker is None or c.header_worker == want_worker:
                break
            c.close()
            c = None
            if time.monotonic() > deadline:
                break
            miss_pause(attempt)
        assert c is not None, "could not get a WebSocket on worker %s" % want_worker
        self.ws = c
        self.worker = c.header_worker
        self.inbox = []
        return self

    def send(self, packet):
        self.ws.send(packet if isinstance(packet, str) else json.dumps(packet))

    def send_packet(self, packet_type, data=None, subject_id=None, **extra):
        self.send(browser_packet(packet_type, subject_id or self.agent_id, data,
                                 **extra))

    def _read_one(self, timeout):
        text = self.ws.recv(timeout)
        if isinstance(text, bytes):
            self.problems.append("browser %s: binary frame" % self.agent_id)
            return None
        try:
            p, dups = parse_packet(text)
        except ValueError:
            self.problems.append("browser %s: frame not JSON: %s"
                                 % (self.agent_id, short(text)))
            return None
        self.problems.extend(packet_problems(p, "browser %s" % self.agent_id))
        if dups:
            self.duplicate_keys.append((dups, short(p)))
        if isinstance(p, dict):
            self.inbox.append(p)
        return p

    def recv_until(self, pred, timeout=WS_TIMEOUT, what="packet"):
        """The first received packet matching pred (earlier non-matching
        ones stay in the inbox, in order)."""
        deadline = time.monotonic() + timeout
        for _ in range(100000):
            for i, p in enumerate(self.inbox):
                if pred(p):
                    return self.inbox.pop(i)
            left = deadline - time.monotonic()
            if left <= 0:
                break
            try:
                self._read_one(left)
            except (asyncio.TimeoutError, TimeoutError):
                break
        raise AssertionError("browser %s: no %s within %.1f s; inbox: %s" % (
            self.agent_id, what, timeout, [short(p, 160) for p in self.inbox[-10:]]))

    def recv(self, timeout=WS_TIMEOUT):
        return self.recv_until(lambda p: True, timeout)

    def collect(self, duration):
        """Read for duration seconds; return (and clear) the whole inbox."""
        deadline = time.monotonic() + duration
        for _ in range(100000):
            left = deadline - time.monotonic()
            if left <= 0:
                break
            try:
                self._read_one(left)
            except (asyncio.TimeoutError, TimeoutError):
                break
        out, self.inbox = self.inbox, []
        return out

    def alive(self, timeout=WS_TIMEOUT):
        """Send alive; return the update_status it brings."""
        self.send_packet("alive")
        return self.recv_until(of_type("update_status", self.agent_id), timeout,
                               "update_status after alive")

    def heartbeat(self, client_timestamp=_NOW, subject_id=None, timeout=WS_TIMEOUT):
        """Send a heartbeat; return its answer."""
        self.send(browser_packet("heartbeat", subject_id or self.agent_id, {},
                                 client_timestamp=client_timestamp))
        return self.recv_until(of_type("heartbeat"), timeout, "heartbeat answer")

    def served(self):
        """True when the socket is open and a heartbeat is answered."""
        try:
            self.heartbeat(timeout=3)
            return True
        except (AssertionError, websockets.exceptions.ConnectionClosed):
            return False

    def close(self):
        self.ws.close()

    def abort(self):
        self.ws.abort()

    # -- HTTP, bodies as mephisto-task 2.0.4 sends them
    def request_agent(self, provider_data=None, params=None, timeout=HTTP_TIMEOUT):
        if provider_data is None:
            provider_data = {"worker_name": "w-" + self.agent_id,
                             "assignment_id": "as-1", "hit_id": "hit-1"}
        return post_json(self.base, "/request_agent",
                         {"provider_data": provider_data,
                          "client_timestamp": time.time()},
                         params=params, timeout=timeout)

    def submit_onboarding(self, onboarding_data=_NOW, agent_id=None,
                          timeout=HTTP_TIMEOUT, **extra_provider):
        pd = {"USED_AGENT_ID": agent_id or self.agent_id}
        if onboarding_data is not _NOW:
            pd["onboarding_data"] = onboarding_data
        pd.update(extra_provider)
        return post_json(self.base, "/submit_onboarding",
                         {"provider_data": pd, "client_timestamp": time.time()},
                         timeout=timeout)

    def submit_task(self, final_data, agent_id=None, timeout=HTTP_TIMEOUT):
        return post_json(self.base, "/submit_task",
                         {"USED_AGENT_ID": agent_id or self.agent_id,
                          "final_data": final_data,
                          "client_timestamp": time.time()}, timeout=timeout)

    def submit_task_multipart(self, final_string_data, files=(), agent_id=None,
                              client_timestamp=None, timeout=HTTP_TIMEOUT):
        fields = {"USED_AGENT_ID": agent_id or self.agent_id,
                  "final_string_data": final_string_data,
                  "client_timestamp": repr(client_timestamp or time.time())}
        return post_multipart(self.base, "/submit_task", fields, files, timeout)

    def submit_metadata(self, metadata, agent_id=None, timeout=HTTP_TIMEOUT):
        return post_json(self.base, "/submit_metadata",
                         {"USED_AGENT_ID": agent_id or self.agent_id,
                          "metadata": metadata,
                          "client_timestamp": time.time()}, timeout=timeout)

    def submit_metadata_multipart(self, metadata_text, files=(), agent_id=None,
                                  timeout=HTTP_TIMEOUT):
        fields = {"USED_AGENT_ID": agent_id or self.agent_id,
                  "metadata": metadata_text,
                  "client_timestamp": repr(time.time())}
        return post_multipart(self.base, "/submit_metadata", fields, files, timeout)

    def log_error(self, error_data=_NOW, agent_id=None, timeout=HTTP_TIMEOUT):
        body = {"USED_AGENT_ID": agent_id or self.agent_id,
                "client_timestamp": time.time()}
        if error_data is not _NOW:
            body["error_data"] = error_data
        return post_json(self.base, "/log_error", body, timeout=timeout)

    def task_config(self, version, extra_params=None):
        params = {"mephisto_task_version": version}
        params.update(extra_params or {})
        return get(self.base, "/task_config.json", params=params)


class Peers:
    """The fake backends and browsers of one test; teardown() stops the
    backends and returns every protocol problem any of them saw."""

    def __init__(self):
        self.backends = []
        self.browsers = []

    def add_backend(self, router, connect=True, **kw):
        kw.setdefault("name", "backend%d" % (len(self.backends) + 1))
        be = FakeBackend(router.ws_url, **kw)
        self.backends.append(be)
        if connect:
            be.connect()
        return be

    def add_browser(self, router, **kw):
        b = FakeBrowser(router, **kw)
        self.browsers.append(b)
        return b

    def teardown(self):
        for be in self.backends:
            be.stop()
        problems = []
        for x in self.backends + self.browsers:
            problems += x.problems
        return problems


@contextlib.contextmanager
def protocol_checked(peers):
    """Yield peers; afterwards stop them and fail the test if a packet from
    the router broke the protocol (only when the test itself passed)."""
    try:
        yield peers
    finally:
        problems = peers.teardown()
    assert not problems, ("packets from the router broke the protocol:\n  "
                          + "\n  ".join(problems[:20]))
