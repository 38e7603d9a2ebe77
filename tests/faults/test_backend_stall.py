"""5. A backend that stops reading, then resumes; and a backlog of more than
4 MB for a backend that was away (issue 9; observed: the router closes the
backend's channel with 1008 and the backlog never gets through whole).

The stalled backend is a raw WebSocket with a 16 KiB receive buffer that
sends its alive and stops reading (what a SIGSTOPped or overloaded
Mephisto backend looks like from the router) while four agents send it a
16 MB burst and then a trickle for 3 s; when it resumes, it reads
everything, and if the router closed it meanwhile it reconnects like
Mephisto does. Per agent, the live updates must arrive complete, once and
in order."""

import time

from faultlib import SlowBackend, assert_still_serving, in_order_without_gaps
from mephisto_fakes import MEPHISTO, backend_packet

MBU = "mephisto_bound_live_update"


def per_agent(packets, agents):
    out = {a: [] for a in agents}
    for p in packets:
        if p.get("packet_type") == MBU and p.get("subject_id") in out:
            out[p["subject_id"]].append(p["data"]["k"])
    return out


def test_backend_stops_reading_then_resumes(env):
    r = env.router()
    be = env.raw(1, rcvbuf=16 * 1024)
    be.send_json(backend_packet("alive", MEPHISTO))
    time.sleep(0.3)
    agents = [env.browser(agent_id="agent-%d%s" % (slot, x), want_worker=slot)
              for slot in (1, 2) for x in "ab"]
    for b in agents:
        b.alive()
    # 4 agents x 1000 x 4 KB = 16 MB: well over the channel's 4 MiB send
    # bound plus what the kernel's socket buffers hold (up to 4 MiB here)
    burst, pad = 1000, "b" * 4000
    for k in range(burst):
        for b in agents:
            b.send_packet(MBU, {"k": k, "pad": pad})
    # the task goes on (a trickle for 3 s) while the backend does not read,
    # and the agents are served meanwhile
    per = burst
    slow = []
    t_end = time.monotonic() + 3.0
    for k in range(burst, burst + 200):
        if time.monotonic() > t_end:
            break
        for b in agents:
            b.send_packet(MBU, {"k": k, "pad": pad})
        per += 1
        if k % 20 == 0:
            b = agents[(k // 20) % len(agents)]
            t0 = time.monotonic()
            if not b.served():
                slow.append(b.agent_id)
            elif time.monotonic() - t0 > 1.0:
                slow.append("%s (%.1f s)" % (b.agent_id, time.monotonic() - t0))
        time.sleep(0.05)
    # the backend reads again; if its channel was closed, it reconnects
    got = be.recv_all(idle=2.0, limit=40.0)
    closes = []
    conn = be
    for _ in range(5):
        if not conn.closed:
            break
        closes.append(conn.close_code)
        conn = env.raw(None)
        conn.send_json(backend_packet("alive", MEPHISTO))
        got += conn.recv_all(idle=2.0, limit=40.0)
    ids = [b.agent_id for b in agents]
    problems = []
    for aid, ks in per_agent(got, ids).items():
        problem = in_order_without_gaps(ks, per)
        if problem:
            problems.append("%s: %s" % (aid, problem))
    r.check_workers()
    assert not problems, ("live updates after the backend's stall (its channel "
                          "closed %d times, codes %s):\n  %s"
                          % (len(closes), closes, "\n  ".join(problems)))
    assert not slow, "agents not served while the backend stalled: %s" % slow
    assert_still_serving(r)


def test_backlog_over_4_mb_reaches_a_returning_backend(env):
    """10 MB of live updates queued while the backend is away reach it
    completely and in order when it comes back, on one channel, although it
    reads slower than the router could push (observed: closed with 1008)."""
    r = env.router()
    agents = [env.browser(agent_id="agent-q%d" % slot, want_worker=slot)
              for slot in (1, 2)]
    for b in agents:
        b.alive()
    per, pad = 640, "q" * 8000  # 2 x 640 x 8 KB = 10.2 MB
    for k in range(per):
        for b in agents:
            b.send_packet(MBU, {"k": k, "pad": pad})
    for b in agents:
        assert b.served()
    time.sleep(1.0)
    # the backend returns, and reads at most 1,000 packets/s (8 MB/s): like
    # Mephisto's, it is slower than the router can push
    be = SlowBackend(r.port, rate=1000, want_worker=1)
    env.cleanups.append(be.finish)
    ids = [b.agent_id for b in agents]
    deadline = time.monotonic() + 40
    for _ in range(1000):  # until all arrived, the channel closed, or 40 s
        if be.closed or time.monotonic() > deadline or \
                be.count(lambda p: p.get("packet_type") == MBU) >= per * len(agents):
            break
        time.sleep(0.2)
    time.sleep(0.5)
    closed = be.closed
    be.finish()
    problems = []
    for aid, ks in per_agent(be.packets, ids).items():
        problem = in_order_without_gaps(ks, per)
        if problem:
            problems.append("%s: %s" % (aid, problem))
    r.check_workers()
    assert not problems and not closed, (
        "the backlog on return (channel %s, close code %s):\n  %s"
        % ("closed" if closed else "open", be.close_code, "\n  ".join(problems)))
    assert_still_serving(r)
