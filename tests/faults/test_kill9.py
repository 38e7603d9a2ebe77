"""7. kill -9 of each process under a submit and stream load (issue 9;
observed: 1 to 22 answered submissions lost when the worker holding the
backend's channel is killed).

Four agents (two per worker) each stream numbered live updates on their
WebSocket and POST submit_task / submit_metadata / log_error with a unique
marker, on threads, reconnecting like mephisto-task when their socket or
the router goes away. The backend (on worker 1) reads at most 100
packets/s, like a busy Mephisto backend, so what the router wrote for it
waits (in the kernel, then in its worker) for a while; it reconnects like
Mephisto's when its channel closes. After 1.5 s one process is killed with
SIGKILL: the worker holding the backend, the other worker, or the
supervisor (its workers follow it; the router is then restarted on the
same state_path and port); the load goes on for 2.5 s more.

Every POST answered 200 must reach the backend (after the restart if
there was one), none twice while the router stayed up, and each agent's
live updates must arrive in order."""

import contextlib
import json
import os
import signal
import threading
import time
import uuid

import pytest
import requests

from conftest import WSClient, is_running, wait_until
from faultlib import SlowBackend, assert_still_serving, session
from mephisto_fakes import browser_packet

MBU = "mephisto_bound_live_update"
# each live update carries 4 KB and the backend reads at most 100 packets/s
# (a busy Mephisto backend): a backlog builds up for it, more than the
# kernel's socket buffers hold, so at the kill some of it waits in the worker
PAD = "l" * 4000
BACKEND_RATE = 100
POSTS = [("/submit_task", "submit_unit",
          lambda aid, m: {"USED_AGENT_ID": aid, "final_data": {"marker": m},
                          "client_timestamp": time.time()}),
         ("/submit_metadata", "submit_metadata",
          lambda aid, m: {"USED_AGENT_ID": aid, "metadata": {"marker": m},
                          "client_timestamp": time.time()}),
         ("/log_error", "log_error",
          lambda aid, m: {"USED_AGENT_ID": aid, "error_data": {"marker": m},
                          "client_timestamp": time.time()})]


class LoadAgent(threading.Thread):
    """One agent: a WebSocket streaming {"k": n} live updates, and a POST
    every other step; everything bounded; stops when stop is set."""

    def __init__(self, url, ws_url, agent_id, want_worker, stop):
        super().__init__(daemon=True, name=agent_id)
        self.url, self.ws_url = url, ws_url
        self.agent_id = agent_id
        self.want_worker = want_worker
        self.stop = stop
        self.sent_k = []
        self.answered = {}  # marker -> (packet type, status or error)
        self.ws = None
        self.reconnects = 0
        self.errors = []

    def connect(self, first):
        for attempt in range(200 if first else 1):
            c = WSClient(self.ws_url, timeout=3)
            if not first or self.want_worker is None or c.header_worker == self.want_worker:
                c.send(json.dumps(browser_packet("alive", self.agent_id)))
                return c
            c.abort()
            time.sleep(0.01)
        raise AssertionError("no WebSocket on worker %s" % self.want_worker)

    def run(self):
        k = 0
        s = session()
        try:
            for step in range(100000):
                if self.stop.is_set():
                    break
                if self.ws is None:
                    try:
                        self.ws = self.connect(first=(step == 0))
                        if step:
                            self.reconnects += 1
                    except Exception as e:  # noqa: BLE001 - the router may be down
                        self.errors.append(repr(e)[:100])
                        time.sleep(0.1)
                        continue
                try:
                    self.ws.send(json.dumps(browser_packet(MBU, self.agent_id,
                                                           {"k": k, "pad": PAD})),
                                 timeout=2)
                    self.sent_k.append(k)
                    k += 1
                except Exception:  # noqa: BLE001 - socket gone: reconnect
                    with contextlib.suppress(Exception):
                        self.ws.abort()
                    self.ws = None
                    continue
                if step % 2 == 0:
                    path, ptype, body = POSTS[(step // 2) % len(POSTS)]
                    marker = "%s-%d" % (self.agent_id, step)
                    try:
                        resp = s.post(self.url + path, json=body("post-" + marker, marker),
                                      timeout=5, headers={"Connection": "close"})
                        self.answered[marker] = (ptype, resp.status_code)
                    except requests.RequestException as e:
                        self.answered[marker] = (ptype, "error: %s" % type(e).__name__)
                time.sleep(0.005)
        finally:
            s.close()
            if self.ws is not None:
                with contextlib.suppress(Exception):
                    self.ws.abort()


def ensure_backend(env, backends, r):
    """The current backend, a new one when its channel closed."""
    if not backends or backends[-1].closed:
        with contextlib.suppress(Exception):
            backends.append(SlowBackend(r.port, rate=BACKEND_RATE))
            env.cleanups.append(backends[-1].finish)
            if backends[0].fast.is_set():
                backends[-1].fast.set()
    return backends[-1] if backends else None


@pytest.mark.parametrize("victim", ["backend-worker", "other-worker", "supervisor"])
def test_kill9_under_load_loses_no_answered_submission(env, victim):
    keys = {"reconnect_grace": 30, "max_backend_queue": 1000000}
    r = env.router(**keys)
    backends = [SlowBackend(r.port, rate=BACKEND_RATE, want_worker=1)]
    env.cleanups.append(backends[0].finish)
    stop = threading.Event()
    agents = [LoadAgent(r.url, r.ws_url, "agent-%s-%d-%s" % (victim[:3], i, uuid.uuid4().hex[:4]),
                        1 + i % 2, stop) for i in range(4)]
    for a in agents:
        a.start()
    killed_at = None
    r_now = r
    try:
        t0 = time.monotonic()
        for _ in range(1000):  # 1.5 s of load, the kill, 2.5 s more
            el = time.monotonic() - t0
            if el > 4.0:
                break
            if killed_at is None and el > 1.5:
                killed_at = time.monotonic()
                if victim == "backend-worker":
                    r.kill_worker(1)
                elif victim == "other-worker":
                    r.kill_worker(2)
                else:
                    workers = r.worker_pids()
                    os.kill(r.pid, signal.SIGKILL)
                    r.proc.wait(timeout=5)
                    assert wait_until(lambda: not [p for p in workers if is_running(p)],
                                      5.0), "workers survived their supervisor"
                    r_now = env.router(**dict(r.keys))  # same port, same state_path
            ensure_backend(env, backends, r_now)
            time.sleep(0.05)
    finally:
        stop.set()
        for a in agents:
            a.join(15)
    for b in backends:
        b.fast.set()  # the load is over: the backend catches up
    r_now.wait_workers(2)
    be = None
    for _ in range(50):
        be = ensure_backend(env, backends, r_now)
        if be is not None and not be.closed:
            break
        time.sleep(0.1)
    assert be is not None and not be.closed, "no backend channel after the kill"

    answered = {}
    for a in agents:
        for m, (ptype, st) in a.answered.items():
            if st == 200:
                answered[m] = ptype

    def received():
        return [p for b in backends for p in b.packets]

    def markers():
        out = {}
        for p in received():
            m = p.get("data", {}).get("marker") if isinstance(p.get("data"), dict) else None
            if m is not None:
                out.setdefault((p["packet_type"], m), []).append(p)
        return out

    def all_arrived():
        ensure_backend(env, backends, r_now)  # a channel that closes reconnects
        got = markers()
        return all((t, m) in got for m, t in answered.items())
    wait_until(all_arrived, 15.0, interval=0.2)
    for b in backends:
        b.finish()
    got = markers()
    lost = sorted(m for m, t in answered.items() if (t, m) not in got)
    twice = sorted(m for (t, m), ps in got.items() if len(ps) > 1)
    problems = []
    if lost:
        problems.append("%d of %d submissions answered 200 never reached the "
                        "backend: %s" % (len(lost), len(answered), lost[:10]))
    if twice and victim != "supervisor":
        problems.append("%d submissions reached the backend twice: %s"
                        % (len(twice), twice[:10]))
    for a in agents:
        ks = [p["data"]["k"] for p in received()
              if p.get("packet_type") == MBU and p.get("subject_id") == a.agent_id]
        if victim == "supervisor":  # a restart may repeat: judge first copies
            seen = set()
            ks = [k for k in ks if not (k in seen or seen.add(k))]
        bad = [(x, y) for x, y in zip(ks, ks[1:]) if y <= x]
        if bad:
            problems.append("%s: live updates out of order or repeated at %s "
                            "(%d received of %d sent)" % (a.agent_id, bad[:5], len(ks),
                                                          len(a.sent_k)))
    assert len(answered) >= 20, "too little load to judge: %d answered" % len(answered)
    assert not problems, "kill -9 of the %s:\n  %s" % (victim, "\n  ".join(problems))
    r_now.check_workers()
    assert_still_serving(r_now)
