"""Integration tests of the SQLite state database (issue "SQLite
agent-state database"), against README.md ("State database", "Command
line") and ../../../shared/PROTOCOL.md ("Where we do better", points 2 and
3): agent statuses and undelivered packets survive kill -9 and SIGTERM, are
delivered in order and exactly once after the restart, the database can be
read with the sqlite3 CLI and `mephisto-router status` while the router
writes it, an unusable database is refused with exit code 2, and the queue
bounds hold.

The real binary runs on 127.0.0.1 (conftest.router_factory, which kills
every process group at teardown); a fake Mephisto backend and fake
mephisto-task browsers (mephisto_fakes.py) talk to it. The database is read
with the `sqlite3` CLI, exactly as an operator would."""

import contextlib
import json
import os
import random
import re
import shutil
import signal
import subprocess
import threading
import time
import uuid

import pytest

from conftest import free_port, is_running, wait_until
from mephisto_fakes import (MEPHISTO, FakeBrowser, Peers, backend_packet,
                            protocol_checked,
                            of_type, short)

SQLITE3 = shutil.which("sqlite3") or "/usr/bin/sqlite3"

# every router of this file (debug log for failure reports; a grace and a
# heartbeat timeout longer than any test, so no status changes by itself)
STATE_KEYS = {"log_level": "debug", "reconnect_grace": 30,
              "heartbeat_timeout": 30, "request_timeout": 3}

CBU = "client_bound_live_update"
MBU = "mephisto_bound_live_update"


# ==========================================================================
# sqlite3 CLI

def sqlite(db, query, timeout=10.0):
    """Run one query with the sqlite3 CLI, as README.md shows it (no busy
    timeout, no options). Returns the CompletedProcess."""
    return subprocess.run([SQLITE3, str(db), query], stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=timeout)


def rows(db, query):
    """The rows of query (lists of column texts); fails on any error."""
    p = sqlite(db, query)
    assert p.returncode == 0 and not p.stderr.strip(), (
        "sqlite3 %r exited %d: %s" % (query, p.returncode, p.stderr.strip()))
    return [line.split("|") for line in p.stdout.splitlines()]


def q_queue(db, dest):
    """The packets queued for dest, in seq order, parsed."""
    return [json.loads(r[0]) for r in rows(
        db, "SELECT packet FROM queued_packets WHERE destination = '%s' "
            "ORDER BY seq" % dest)]


def q_queue_counts(db):
    return {d: int(n) for d, n in rows(
        db, "SELECT destination, count(*) FROM queued_packets GROUP BY destination")}


def q_agent(db, agent_id):
    """{status, attached_worker, is_alive, ...} of agent_id, or None."""
    cols = ["status", "attached_worker", "attached_conn", "is_alive",
            "last_ping", "disconnect_time"]
    got = rows(db, "SELECT %s FROM agents WHERE agent_id = '%s'"
               % (", ".join(cols), agent_id))
    return dict(zip(cols, got[0])) if got else None


def q_meta(db, key):
    got = rows(db, "SELECT value FROM router_meta WHERE key = '%s'" % key)
    return got[0][0] if got else None


def wait_db(pred, what, timeout=5.0):
    """Poll the database through pred() (bounded); fail with what."""
    last = [None]

    def check():
        last[0] = pred()
        return last[0]
    got = wait_until(check, timeout, interval=0.05)
    assert got, "database: %s not seen within %.0f s (last: %r)" % (what, timeout, last[0])
    return got


# the operator queries of README.md, verbatim
README_Q_ATTACHED_PER_WORKER = """SELECT attached_worker, count(*) FROM agents
  WHERE attached_worker IS NOT NULL GROUP BY attached_worker"""
README_Q_ATTACHED_AGENTS = """SELECT agent_id, attached_worker, status FROM agents
  WHERE attached_worker IS NOT NULL ORDER BY attached_worker"""
README_Q_PER_STATUS = "SELECT status, count(*) FROM agents GROUP BY status"
README_Q_QUEUED = """SELECT destination, count(*),
  round((julianday('now') - 2440587.5) * 86400 - min(created_at), 1)
  FROM queued_packets GROUP BY destination"""
README_Q_META = """SELECT key, datetime(value, 'unixepoch') FROM router_meta
  WHERE key IN ('last_backend_ping', 'started_at')
  UNION ALL SELECT key, value FROM router_meta WHERE key = 'backend_attached'"""
README_QUERIES = [README_Q_ATTACHED_PER_WORKER, README_Q_ATTACHED_AGENTS,
                  README_Q_PER_STATUS, README_Q_QUEUED, README_Q_META]


# ==========================================================================
# fixture

class St(Peers):
    """Routers (sharing a state database across restarts), fake backends and
    fake browsers of one test."""

    def __init__(self, factory, tmp_path):
        self.factory = factory
        self.tmp_path = tmp_path
        super().__init__()

    def router(self, **keys):
        k = dict(STATE_KEYS)
        k.setdefault("state_path", str(self.tmp_path / "state.db"))
        k.update(keys)
        return self.factory(**k)

    def restart(self, r, how):
        """Stop r (kill -9 of its whole process group, or SIGTERM) and start
        a new router on the same configuration: same keys, same port, same
        state_path."""
        if how == "kill9":
            kill_and_wait(r)
        else:
            workers = r.worker_pids()
            rc = r.stop()
            assert rc == 0, "SIGTERM: router exited with %r\n%s" % (rc, r.log_tail())
            assert wait_until(lambda: not [p for p in workers if is_running(p)], 3.0), (
                "workers survived the stop: %s" % [p for p in workers if is_running(p)])
        return self.factory(**dict(r.keys))

    def backend(self, r, connect=True, **kw):
        kw.setdefault("poll_interval", None)
        return self.add_backend(r, connect, **kw)

    def browser(self, r, **kw):
        return self.add_browser(r, **kw)

    def two_alive(self, r):
        """An agent on each worker (1 and 2), both alive."""
        x = self.browser(r, want_worker=1)
        y = self.browser(r, want_worker=2)
        x.alive()
        y.alive()
        return x, y


@pytest.fixture
def st(router_factory, tmp_path):
    with protocol_checked(St(router_factory, tmp_path)) as s:
        yield s


def new_id(prefix="agent"):
    return "%s-%s" % (prefix, uuid.uuid4().hex[:10])


def set_status(be, b, status):
    """The backend sets b's status; wait until b has seen it."""
    be.set_status(b.agent_id, status)
    b.recv_until(lambda p: p["packet_type"] == "update_status" and
                 p["data"].get("status") == status, what="update_status %s" % status)


def wait_detached(db, agent_id):
    wait_db(lambda: (q_agent(db, agent_id) or {}).get("attached_worker") == "",
            "agent %s detached" % agent_id)


def wait_backend_attached(db, value):
    wait_db(lambda: q_meta(db, "backend_attached") == value,
            "backend_attached = %s" % value)


def mbu_keys(packets):
    return [(p["data"].get("who"), p["data"].get("k")) for p in packets]


def recv_n(b, n, timeout=6.0):
    """The next n packets of browser b, in order (bounded)."""
    got = []
    deadline = time.monotonic() + timeout
    for _ in range(n):
        left = deadline - time.monotonic()
        assert left > 0, "browser %s: %d of %d packets within %.0f s: %s" % (
            b.agent_id, len(got), n, timeout, [short(p, 120) for p in got])
        got.append(b.recv(timeout=left))
    return got


def kill_and_wait(r):
    """kill -9 of r's whole process group; wait until every process is gone."""
    workers = r.worker_pids()
    os.killpg(r.pgid, signal.SIGKILL)
    r.proc.wait(timeout=5)
    assert wait_until(lambda: not [p for p in workers if is_running(p)], 3.0), (
        "workers survived kill -9 of the group: %s" % [p for p in workers if is_running(p)])


# ==========================================================================
# 1, 2. a crash or a stop in the middle of a task loses nothing

@pytest.mark.parametrize("how", ["kill9", "sigterm"])
def test_restart_keeps_statuses_and_queues(st, how):
    r1 = st.router()
    db = r1.keys["state_path"]
    be = st.backend(r1)
    a = st.browser(r1, want_worker=1)
    b = st.browser(r1, want_worker=2)
    a.alive()
    b.alive()
    set_status(be, a, "waiting")
    set_status(be, b, "in task")
    assert rows(db, "PRAGMA journal_mode") == [["wal"]]

    # c never connected: the backend's packets for it wait from the start
    c_id = new_id("never")
    for n in range(2):
        be.send(backend_packet(CBU, c_id, {"c": n}))
    # a's socket closes; the backend goes on talking to it
    a.close()
    wait_detached(db, a.agent_id)
    for n in range(3):
        be.send(backend_packet(CBU, a.agent_id, {"n": n}))
    be.set_status(a.agent_id, "in task")
    be.send(backend_packet(CBU, a.agent_id, {"n": 3}))
    want = {a.agent_id: "in task", b.agent_id: "in task", c_id: "none"}
    assert be.statuses() == want

    # the backend goes away; b goes on talking to it
    be.close()
    assert be.wait_closed(3)
    wait_backend_attached(db, "0")
    for k in range(10):
        b.send_packet(MBU, {"who": "b", "k": k})
    assert b.served()

    # what is on disk before the stop (the heartbeat answer left after the
    # turn that queued the packets was committed)
    qa = q_queue(db, a.agent_id)
    assert [(p["packet_type"], p["data"]) for p in qa] == [
        (CBU, {"n": 0}), (CBU, {"n": 1}), (CBU, {"n": 2}),
        ("update_status", {"status": "in task"}), (CBU, {"n": 3})], (
        "queued for %s: %s" % (a.agent_id, [short(p, 120) for p in qa]))
    assert mbu_keys(q_queue(db, MEPHISTO)) == [("b", k) for k in range(10)]
    assert [p["data"] for p in q_queue(db, c_id)] == [{"c": 0}, {"c": 1}]
    row_a, row_b = q_agent(db, a.agent_id), q_agent(db, b.agent_id)
    assert row_a["status"] == "in task" and row_a["attached_worker"] == "", row_a
    assert row_b["status"] == "in task" and row_b["attached_worker"] == str(b.worker), row_b

    # crash or stop, restart on the same configuration
    r2 = st.restart(r1, how)
    assert r2.port == r1.port
    assert r2.wait_log("recovered 3 agents and 17 queued packets", timeout=2), (
        "no recovery line for 3 agents and 17 packets\n%s" % r2.log_tail())

    # the backend gets its queue in order on its alive, then the statuses
    be2 = st.backend(r2)
    got = be2.wait_n(of_type(MBU), 10, timeout=5)
    assert mbu_keys(got) == [("b", k) for k in range(10)]
    assert be2.statuses() == want, "statuses after the restart"

    # a comes back: its status, then its queue in order
    a2 = st.browser(r2, agent_id=a.agent_id)
    a2.send_packet("alive")
    seen = recv_n(a2, 6)
    assert [(p["packet_type"], p["subject_id"], p["data"]) for p in seen] == [
        ("update_status", a.agent_id, {"status": "in task"}),
        (CBU, a.agent_id, {"n": 0}), (CBU, a.agent_id, {"n": 1}),
        (CBU, a.agent_id, {"n": 2}),
        ("update_status", a.agent_id, {"status": "in task"}),
        (CBU, a.agent_id, {"n": 3})], [short(p, 160) for p in seen]
    b2 = st.browser(r2, agent_id=b.agent_id)
    assert b2.alive()["data"] == {"status": "in task"}
    c2 = st.browser(r2, agent_id=c_id)
    c2.send_packet("alive")
    seen = recv_n(c2, 3)
    assert [(p["packet_type"], p["data"]) for p in seen] == [
        ("update_status", {"status": "none"}), (CBU, {"c": 0}), (CBU, {"c": 1})], (
        [short(p, 160) for p in seen])

    # exactly once: nothing more arrives, nothing is left on disk
    extra = a2.collect(1.0) + b2.collect(0.1) + c2.collect(0.1)
    assert not extra, "duplicates after the restart: %s" % [short(p, 160) for p in extra]
    assert be2.count(of_type(MBU)) == 10, mbu_keys(be2.received(of_type(MBU)))
    wait_db(lambda: q_queue_counts(db) == {}, "empty queues after delivery")
    assert q_agent(db, a.agent_id)["attached_worker"] == str(a2.worker)

    # and a second crash does not deliver them again
    r3 = st.restart(r2, "kill9")
    be3 = st.backend(r3)
    a3 = st.browser(r3, agent_id=a.agent_id)
    assert a3.alive()["data"] == {"status": "in task"}
    assert be3.statuses() == want
    again = a3.collect(0.5)
    assert not again, "delivered again after a second restart: %s" % [
        short(p, 160) for p in again]
    assert be3.count(of_type(MBU)) == 0, mbu_keys(be3.received(of_type(MBU)))


def test_reconnect_grace_counts_from_the_restart(st):
    """Agents that had a socket, or were within their grace, when the router
    died get a whole reconnect_grace from the restart: nobody could come
    back while it was down."""
    grace = 2.0
    r1 = st.router(reconnect_grace=grace)
    db = r1.keys["state_path"]
    be = st.backend(r1)
    a = st.browser(r1)   # attached at the crash, never comes back
    b = st.browser(r1)   # attached at the crash, comes back
    d = st.browser(r1)   # detached shortly before the crash
    f = st.browser(r1)   # detached, in a final status
    for x, status in ((a, "in task"), (b, "in task"), (d, "waiting"), (f, "completed")):
        x.alive()
        set_status(be, x, status)
    f.close()
    d.close()
    wait_detached(db, d.agent_id)
    wait_detached(db, f.agent_id)
    time.sleep(grace * 0.6)
    kill_and_wait(r1)
    time.sleep(grace * 0.6)  # d's grace, counted from its close, is over now
    t0 = time.monotonic()
    r2 = st.factory(**dict(r1.keys))
    be2 = st.backend(r2)
    want = {a.agent_id: "in task", b.agent_id: "in task", d.agent_id: "waiting",
            f.agent_id: "completed"}
    got = be2.statuses()
    assert time.monotonic() - t0 < grace - 0.3, "restart too slow for this test"
    assert got == want, "statuses right after the restart"
    # nobody holds a socket after the restart: no stale attachment on disk
    wait_db(lambda: rows(db, README_Q_ATTACHED_PER_WORKER) == [],
            "no attached agents after the restart")
    b2 = st.browser(r2, agent_id=b.agent_id)
    assert b2.alive()["data"] == {"status": "in task"}

    t_disc = None
    deadline = t0 + grace + 3
    for _ in range(200):
        got = be2.statuses()
        if got.get(a.agent_id) == "disconnect":
            t_disc = time.monotonic()
            break
        assert got == want, "before the grace ran out: %s" % got
        if time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert t_disc is not None, "a never became disconnect: %s" % got
    assert t_disc - t0 >= grace, (
        "disconnect %.2f s after the restart began, grace %.1f s" % (t_disc - t0, grace))
    time.sleep(0.2)
    got = be2.statuses()
    assert got == {a.agent_id: "disconnect", b.agent_id: "in task",
                   d.agent_id: "disconnect", f.agent_id: "completed"}, got
    row_b = q_agent(db, b.agent_id)
    assert row_b["status"] == "in task" and row_b["attached_worker"] == str(b2.worker)
    wait_db(lambda: (q_agent(db, a.agent_id) or {}).get("status") == "disconnect",
            "a's disconnect written")


# ==========================================================================
# 3. 1,000 packets for an absent backend

@pytest.mark.parametrize("between", ["reconnect", "kill9"])
def test_thousand_packets_for_absent_backend(st, between):
    r = st.router(log_level="info", max_backend_queue=5000)
    db = r.keys["state_path"]
    be = st.backend(r)
    x, y = st.two_alive(r)
    # delivered at once: never queued
    for k in range(5):
        x.send_packet(MBU, {"who": "x-live", "k": k})
    be.wait_n(of_type(MBU), 5)
    assert q_queue_counts(db) == {}

    be.close()
    assert be.wait_closed(3)
    wait_backend_attached(db, "0")
    for k in range(500):
        x.send_packet(MBU, {"who": "x", "k": k, "pad": "p" * 100})
        y.send_packet(MBU, {"who": "y", "k": k, "pad": "q" * 100})
    assert x.served() and y.served()
    queued = wait_db(lambda: (lambda q: len(q) == 1000 and q)(q_queue(db, MEPHISTO)),
                     "1000 packets queued for the backend")
    order = mbu_keys(queued)  # seq order, the delivery order
    for who in ("x", "y"):
        assert [k for w, k in order if w == who] == list(range(500)), (
            "%s's packets out of order on disk" % who)

    if between == "kill9":
        r = st.restart(r, "kill9")
    be2 = st.backend(r)
    got = be2.wait_n(of_type(MBU), 1000, timeout=15)
    time.sleep(1.0)
    got = be2.received(of_type(MBU))
    assert len(got) == 1000, "%d packets delivered, 1000 queued" % len(got)
    assert mbu_keys(got) == order, "not delivered in queue order"
    wait_db(lambda: q_queue_counts(db) == {}, "empty queue after delivery")
    if between == "reconnect":
        assert be.count(of_type(MBU)) == 5


@pytest.mark.parametrize("between", ["reconnect", "kill9"])
def test_backend_closes_while_thousand_packets_arrive(st, between):
    """The backend closes its socket (a clean close, as the websockets
    library does) while 1,000 agent packets are flowing to it: what the old
    socket did not get is queued (also the packets a worker could not write
    any more) and comes on the new one, after a crash and restart too, so
    the two together hold every packet once, each agent's in order."""
    r = st.router(log_level="info", max_backend_queue=5000)
    db = r.keys["state_path"]
    be = st.backend(r)
    x, y = st.two_alive(r)
    closer = None
    for k in range(500):
        if k == 150:
            closer = threading.Thread(target=be.close, name="close", daemon=True)
            closer.start()
        x.send_packet(MBU, {"who": "x", "k": k, "pad": "p" * 100})
        y.send_packet(MBU, {"who": "y", "k": k, "pad": "q" * 100})
    closer.join(10)
    assert not closer.is_alive() and be.wait_closed(3)
    assert x.served() and y.served()
    wait_backend_attached(db, "0")
    first = mbu_keys(be.received(of_type(MBU)))
    queued = len(q_queue(db, MEPHISTO))
    assert 0 < queued < 1000 and len(first) < 1000, (
        "the close did not fall inside the stream (%d delivered, %d queued); "
        "the test needs adjusting" % (len(first), queued))
    if between == "kill9":
        r = st.restart(r, "kill9")
    be2 = st.backend(r)
    be2.wait_n(of_type(MBU), 1000 - len(first), timeout=15)
    time.sleep(1.0)
    second = mbu_keys(be2.received(of_type(MBU)))
    both = first + second
    dups = sorted({key for key in both if both.count(key) > 1})
    assert not dups, "delivered twice: %s" % dups[:20]
    for who in ("x", "y"):
        mine = [k for w, k in both if w == who]
        assert mine == list(range(500)), (
            "%s: %d delivered before the close, %d after; lost %s, out of order: %s"
            % (who, len([1 for w, _ in first if w == who]),
               len([1 for w, _ in second if w == who]),
               sorted(set(range(500)) - set(mine))[:20], mine != sorted(mine)))
    wait_db(lambda: q_queue_counts(db) == {}, "empty queue after delivery")


def test_kill9_while_packets_arrive_keeps_a_prefix(st):
    """kill -9 while agents are sending to an absent backend: after the
    restart each agent's packets that survived are a prefix of what it sent
    (a transaction is all or nothing, and commits follow the arrival
    order), delivered once, in order; at least everything the router had
    answered a heartbeat after is there."""
    r = st.router(log_level="info", max_backend_queue=5000)
    db = r.keys["state_path"]
    x, y = st.two_alive(r)
    for k in range(100):
        x.send_packet(MBU, {"who": "x", "k": k})
        y.send_packet(MBU, {"who": "y", "k": k})
    assert x.served() and y.served()  # 0..99 of each are committed
    killer = None
    sent = {"x": 100, "y": 100}
    for k in range(100, 2000):
        if k == 300:
            killer = threading.Thread(target=kill_and_wait, args=(r,), daemon=True)
            killer.start()
        try:
            x.send_packet(MBU, {"who": "x", "k": k})
            sent["x"] += 1
            y.send_packet(MBU, {"who": "y", "k": k})
            sent["y"] += 1
        except Exception:  # the router is gone
            break
    killer.join(10)
    assert not killer.is_alive()
    r2 = st.factory(**dict(r.keys))
    queued = len(q_queue(db, MEPHISTO))
    assert queued >= 200, queued
    be = st.backend(r2)
    be.wait_n(of_type(MBU), queued, timeout=15)
    time.sleep(1.0)
    got = mbu_keys(be.received(of_type(MBU)))
    assert len(got) == queued, "%d delivered, %d were on disk" % (len(got), queued)
    for who in ("x", "y"):
        mine = [k for w, k in got if w == who]
        assert mine == list(range(len(mine))), (
            "%s: not a prefix of what it sent (%d sent): %s" % (who, sent[who], mine[:50]))
        assert len(mine) >= 100, "%s: committed packets lost: %d left" % (who, len(mine))
    wait_db(lambda: q_queue_counts(db) == {}, "empty queue after delivery")


# ==========================================================================
# 4. the sqlite3 CLI reads the live database

def attached_expectation(held):
    per_worker = {}
    for b, _ in held:
        per_worker[b.worker] = per_worker.get(b.worker, 0) + 1
    return per_worker


def test_sqlite3_cli_while_the_router_writes(st, cli):
    t_start = time.time()
    r = st.router(log_level="info")
    db = r.keys["state_path"]
    be = st.backend(r)
    held = []
    for w, status in [(1, "in task"), (1, "in task"), (1, "waiting"),
                      (1, "onboarding"), (2, "in task"), (2, "waiting"),
                      (2, "waiting")]:
        b = st.browser(r, want_worker=w)
        b.alive()
        set_status(be, b, status)
        held.append((b, status))
    absent = [new_id("absent") for _ in range(3)]
    first_queued = {}
    sent_to = {a: 0 for a in absent}
    churned = []
    traffic_errors = []
    done = threading.Event()

    def traffic():
        try:
            # agents attach and detach; the backend queues packets for
            # absent agents
            for i in range(40):
                c = FakeBrowser(r)
                c.alive()
                c.send_packet(MBU, {"churn": i})
                c.close()
                churned.append(c.agent_id)
                for a in absent:
                    first_queued.setdefault(a, time.time())
                    be.send(backend_packet(CBU, a, {"i": i, "pad": "z" * 200}))
                    sent_to[a] += 1
            be.statuses()
            # the backend goes away; the held agents queue packets for it
            be.close()
            for i in range(60):
                for b, _ in held:
                    first_queued.setdefault(MEPHISTO, time.time())
                    b.send_packet(MBU, {"who": b.agent_id, "k": i})
            for b, _ in held:
                assert b.served()
        except BaseException as e:  # reported by the main thread
            traffic_errors.append(repr(e))
        finally:
            done.set()

    th = threading.Thread(target=traffic, name="traffic", daemon=True)
    th.start()
    failures = []
    during = 0
    deadline = time.monotonic() + 30
    for i in range(2000):
        if (done.is_set() and i >= 50) or time.monotonic() > deadline:
            break
        if i % 10 == 9:
            # the status command, too
            res = cli(["status", "--db", db])
            if res.returncode != 0 or res.stderr.strip() or res.timed_out:
                failures.append("status run %d: %r" % (i, res))
            continue
        q = README_QUERIES[i % len(README_QUERIES)]
        p = sqlite(db, q)
        if not done.is_set():
            during += 1
        if p.returncode != 0 or p.stderr.strip():
            failures.append("query %d exited %d: %s" % (i, p.returncode, p.stderr.strip()))
    th.join(20)
    assert not th.is_alive(), "traffic thread did not finish"
    assert not traffic_errors, "traffic failed: %s" % traffic_errors
    assert not failures, "sqlite3 on the live database failed:\n" + "\n".join(failures[:10])
    print("queries during traffic: %d" % during)
    assert during >= 20, "only %d queries ran while traffic flowed" % during

    # quiet now: the README's queries tell the truth
    per_worker = attached_expectation(held)
    wait_db(lambda: {int(w): int(n) for w, n in rows(db, README_Q_ATTACHED_PER_WORKER)}
            == per_worker, "attached agents per worker == %s" % per_worker)
    got = sorted((a, int(w), s) for a, w, s in rows(db, README_Q_ATTACHED_AGENTS))
    assert got == sorted((b.agent_id, b.worker, s) for b, s in held)

    per_status = {}
    for _, s in held:
        per_status[s] = per_status.get(s, 0) + 1
    per_status["none"] = len(absent) + len(churned)
    assert {s: int(n) for s, n in rows(db, README_Q_PER_STATUS)} == per_status

    want_counts = dict(sent_to)
    want_counts[MEPHISTO] = 60 * len(held)
    wait_db(lambda: q_queue_counts(db) == want_counts,
            "queued per destination == %s" % want_counts)
    t_query = time.time()
    got = {d: (int(n), float(age)) for d, n, age in rows(db, README_Q_QUEUED)}
    t_after = time.time()
    assert {d: n for d, (n, _) in got.items()} == want_counts
    for d, (_, age) in got.items():
        lo = t_query - first_queued[d] - 0.5
        hi = t_after - first_queued[d] + 0.5
        assert lo <= age <= hi, "oldest age for %s: %.1f s, expected %.1f..%.1f" % (
            d, age, lo, hi)

    meta = dict(rows(db, README_Q_META))
    assert meta.get("backend_attached") == "0", meta
    for key in ("started_at", "last_backend_ping"):
        assert re.match(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d$", meta.get(key) or ""), meta
    raw = dict(rows(db, "SELECT key, value FROM router_meta"))
    assert rows(db, "SELECT datetime(%d, 'unixepoch')" % int(float(raw["started_at"]))) \
        == [[meta["started_at"]]], (meta, raw)
    assert t_start - 2 <= float(raw["started_at"]) <= time.time() + 1, raw
    # the last request_statuses was sent just before the backend left
    assert float(raw["started_at"]) - 1 <= float(raw["last_backend_ping"]) <= time.time(), raw
    assert raw["schema_version"] == "2", raw


# ==========================================================================
# 5. mephisto-router status

def parse_status(text):
    """{'agents': n, 'per_status': {}, 'per_worker': {}, 'queued': n,
    'per_dest': {dest: (n, oldest)}} from the status command's output."""
    out = {"per_status": {}, "per_worker": {}, "per_dest": {}}
    section = None
    for line in text.splitlines():
        m = re.match(r"^agents:\s+(\d+)\s*$", line)
        if m:
            out["agents"] = int(m.group(1))
            continue
        m = re.match(r"^queued packets:\s+(\d+)\s*$", line)
        if m:
            out["queued"] = int(m.group(1))
            continue
        if line.startswith("agents per status"):
            section = "per_status"
            continue
        if line.startswith("attached agents per worker"):
            section = "per_worker"
            continue
        if line.startswith("queued per destination"):
            section = "per_dest"
            continue
        if not line.startswith("  "):
            section = None
            continue
        body = line.strip()
        if section == "per_status":
            m = re.match(r"^(.*\S)\s+(\d+)$", body)
            if m:
                out["per_status"][m.group(1)] = int(m.group(2))
        elif section == "per_worker":
            m = re.match(r"^worker\s+(\d+)\s+(\d+)$", body)
            if m:
                out["per_worker"][int(m.group(1))] = int(m.group(2))
        elif section == "per_dest":
            m = re.match(r"^(\S+)\s+(\d+), oldest ([\d.]+) s$", body)
            if m:
                out["per_dest"][m.group(1)] = (int(m.group(2)), float(m.group(3)))
    return out


def test_status_command_while_running(st, cli):
    r = st.router()
    db = r.keys["state_path"]
    be = st.backend(r)
    held = []
    for w, status in [(1, "in task"), (1, "waiting"), (2, "in task")]:
        b = st.browser(r, want_worker=w)
        b.alive()
        set_status(be, b, status)
        held.append((b, status))
    gone = st.browser(r)
    gone.alive()
    set_status(be, gone, "onboarding")
    gone.close()
    wait_detached(db, gone.agent_id)
    absent = {new_id("absent"): 4, new_id("absent"): 2}
    t0 = time.time()
    for a, n in absent.items():
        for i in range(n):
            be.send(backend_packet(CBU, a, {"i": i}))
    for i in range(3):
        be.send(backend_packet(CBU, gone.agent_id, {"i": i}))
    be.statuses()
    be.close()
    assert be.wait_closed(3)
    wait_backend_attached(db, "0")
    for i in range(5):
        held[0][0].send_packet(MBU, {"k": i})
    assert held[0][0].served()

    want_dest = dict(absent)
    want_dest[gone.agent_id] = 3
    want_dest[MEPHISTO] = 5
    per_worker = attached_expectation(held)
    per_status = {"in task": 2, "waiting": 1, "onboarding": 1, "none": 2}
    wait_db(lambda: q_queue_counts(db) == want_dest, "queues %s" % want_dest)

    for args in (["status", "--db", db], ["status", "--config", str(r.config_path)]):
        t_run = time.time()
        res = cli(args)
        assert res.returncode == 0 and not res.timed_out, res
        assert db in res.stdout, res
        s = parse_status(res.stdout)
        assert s.get("agents") == 6, (s, res.stdout)
        assert s["per_status"] == per_status, res.stdout
        assert s["per_worker"] == per_worker, res.stdout
        assert s.get("queued") == sum(want_dest.values()), res.stdout
        assert {d: n for d, (n, _) in s["per_dest"].items()} == want_dest, res.stdout
        for d, (_, age) in s["per_dest"].items():
            assert 0 <= age <= time.time() - t0 + 0.5, (d, age, res.stdout)
        assert re.search(r"^backend attached:\s+no$", res.stdout, re.M), res.stdout
        assert time.time() - t_run < 5
    # the router is unaffected
    assert r.proc.poll() is None
    be2 = st.backend(r)
    assert be2.wait_n(of_type(MBU), 5)


# ==========================================================================
# 6. an unusable state database is refused

def _chattr(path, flag):
    p = subprocess.run(["chattr", flag, str(path)], capture_output=True, text=True,
                       timeout=10)
    return p.returncode == 0, p.stderr.strip()


def _config(tmp_path, state_path):
    conf = tmp_path / "bad-state.conf"
    static = tmp_path / "static"
    static.mkdir(exist_ok=True)
    port = free_port()
    conf.write_text("listen_address = 127.0.0.1\nport = %d\nworkers = 2\n"
                    "static_dir = %s\nstate_path = %s\n" % (port, static, state_path))
    return conf


BAD_DBS = ["file-readonly", "dir-readonly", "dir-missing", "random-bytes",
           "text", "newer-schema"]


@pytest.mark.parametrize("kind", BAD_DBS)
def test_unusable_state_database_exit_2(st, cli, tmp_path, kind):
    root = os.geteuid() == 0
    immutable = []  # paths to chattr -i at the end
    path = tmp_path / "bad" / "state.db"
    path.parent.mkdir()
    try:
        if kind == "file-readonly":
            # an existing, valid database, left by a router that stopped
            r = st.router(state_path=str(path))
            assert r.stop() == 0
            assert not os.path.exists(str(path) + "-wal")
            os.chmod(path, 0o444)
            if root:  # root ignores mode bits: make the file immutable
                ok, why = _chattr(path, "+i")
                if not ok:
                    pytest.skip("running as root, mode 0444 does not stop root "
                                "and chattr +i failed (%s)" % why)
                immutable.append(path)
        elif kind == "dir-readonly":
            os.chmod(path.parent, 0o555)
            if root:
                ok, why = _chattr(path.parent, "+i")
                if not ok:
                    pytest.skip("running as root, mode 0555 does not stop root "
                                "and chattr +i failed (%s)" % why)
                immutable.append(path.parent)
        elif kind == "dir-missing":
            path = tmp_path / "no-such-dir" / "state.db"
        elif kind == "random-bytes":
            path.write_bytes(random.Random(7).randbytes(16384))
        elif kind == "text":
            path.write_text("this is not a database\n" * 50)
        elif kind == "newer-schema":
            # as a newer router would leave it: WAL mode, a higher version
            rows(path, "PRAGMA journal_mode = WAL; CREATE TABLE t (x); "
                       "PRAGMA user_version = 99;")
        before = path.read_bytes() if path.exists() else None
        conf = _config(tmp_path, path)
        res = cli(["--config", str(conf)], timeout=10)
    finally:
        for p in immutable:
            _chattr(p, "-i")
        with contextlib.suppress(OSError):
            os.chmod(tmp_path / "bad", 0o755)
    assert not res.timed_out and res.returncode == 2, res
    lines = [ln for ln in (res.stderr + res.stdout).splitlines() if ln.strip()]
    assert len(lines) == 1, "expected one line, got:\n%s" % "\n".join(lines)
    assert str(path) in lines[0] and lines[0].startswith("mephisto-router: "), lines[0]
    if kind in ("random-bytes", "text", "file-readonly", "newer-schema"):
        assert path.read_bytes() == before, "the refused database was modified"
    if kind in ("dir-missing", "dir-readonly"):
        assert not path.exists()
    # (the cli fixture checks that no process of the run is left)


# ==========================================================================
# 7. queue bounds

def test_agent_queue_keeps_the_newest(st):
    r = st.router(max_agent_queue=5)
    db = r.keys["state_path"]
    be = st.backend(r)
    a = st.browser(r)
    a.alive()
    set_status(be, a, "in task")
    a.close()
    wait_detached(db, a.agent_id)
    mark = len(r.log())
    for n in range(12):
        be.send(backend_packet(CBU, a.agent_id, {"n": n}))
    be.statuses()
    assert r.wait_log("queued for %s" % a.agent_id, start=mark), (
        "no log line about the dropped packets\n%s" % r.log_tail())
    dropped = [ln for ln in r.log()[mark:].splitlines()
               if "dropped" in ln and a.agent_id in ln]
    assert dropped, r.log_tail()
    wait_db(lambda: [p["data"]["n"] for p in q_queue(db, a.agent_id)] == list(range(7, 12)),
            "the 5 newest packets on disk")
    a2 = st.browser(r, agent_id=a.agent_id)
    a2.send_packet("alive")
    seen = recv_n(a2, 6)
    assert seen[0]["packet_type"] == "update_status" and \
        seen[0]["data"] == {"status": "in task"}, short(seen[0])
    assert [(p["packet_type"], p["data"].get("n")) for p in seen[1:]] == [
        (CBU, n) for n in range(7, 12)], [short(p, 120) for p in seen]
    extra = a2.collect(1.0)
    assert not extra, [short(p, 120) for p in extra]


def test_backend_queue_age_limit_drops_old_packets(st):
    r = st.router(max_backend_queue_age=1)
    db = r.keys["state_path"]
    a = st.browser(r)
    a.alive()
    mark = len(r.log())
    for n in range(3):
        a.send_packet(MBU, {"n": n})
    assert a.served()
    assert q_queue_counts(db) == {MEPHISTO: 3}
    assert r.wait_log("queued for the backend", timeout=3, start=mark), (
        "no log line about the packets dropped for age\n%s" % r.log_tail())
    wait_db(lambda: q_queue_counts(db) == {}, "old packets removed from disk")
    for n in (100, 101):
        a.send_packet(MBU, {"n": n})
    assert a.served()
    be = st.backend(r)
    be.wait_n(of_type(MBU), 2)
    time.sleep(0.5)
    got = [p["data"]["n"] for p in be.received(of_type(MBU))]
    assert got == [100, 101], "packets older than max_backend_queue_age: %s" % got


# ==========================================================================
# a full disk: logged, live traffic goes on, the writes are retried

@pytest.fixture
def small_tmpfs(tmp_path):
    """A 2 MiB tmpfs (needs root and mount; skipped where impossible)."""
    mnt = tmp_path / "tmpfs"
    mnt.mkdir()
    p = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)],
                       capture_output=True, text=True)
    if p.returncode != 0:
        pytest.skip("cannot mount a tmpfs here: %s" % p.stderr.strip())
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def fill(path):
    """Fill the file system of path with one file; returns its path."""
    filler = path / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        with contextlib.suppress(OSError):
            for _ in range(1000):  # 2 MiB in 4 KiB writes, bounded
                os.write(fd, b"\0" * 4096)
    finally:
        os.close(fd)
    return filler


def test_disk_full_keeps_routing_and_retries(st, small_tmpfs):
    db = small_tmpfs / "state.db"
    r = st.router(state_path=str(db))
    be = st.backend(r)
    a = st.browser(r)
    a.alive()
    wait_db(lambda: q_agent(db, a.agent_id) is not None, "agent row written")
    filler = fill(small_tmpfs)
    try:
        # no backend: these packets must be queued, and cannot be written
        be.close()
        assert be.wait_closed(3)
        for k in range(20):
            a.send_packet(MBU, {"who": "a", "k": k, "pad": "z" * 2000})
        assert wait_until(lambda: "state database: cannot write" in r.log(), 5.0), (
            "no log line for the failed write\n" + r.log_tail())
        # live traffic goes on meanwhile: a new backend gets the queue, and
        # a heartbeat is answered
        assert a.served()
    finally:
        os.unlink(filler)
    assert wait_until(lambda: "state database: writing again" in r.log(), 5.0), (
        "the write was not retried\n" + r.log_tail())
    be2 = st.backend(r)
    got = be2.wait_n(of_type(MBU), 20, timeout=10)
    assert [p["data"]["k"] for p in got] == list(range(20))
    wait_db(lambda: q_queue_counts(db) == {}, "queue rows gone after delivery")
