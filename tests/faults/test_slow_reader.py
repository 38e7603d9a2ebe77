"""4. A browser that never reads its socket while the backend sends it many
updates (issue 9; observed: supervisor at 98% CPU, its worker at 89%, and
the other agents of that worker without a heartbeat answer for 20 s).

Each worker holds one stuck browser: a raw WebSocket with a 16 KiB receive
buffer that stops reading after its alive. The backend sends each of them
1,200 packets of 10 KB at once (12 MB: more than a connection's 4 MiB send
bound plus what the kernel's socket buffers hold, up to 4 MiB here), then a
trickle of 25 packets/s each for 7 s, while the heartbeats of an ordinary
agent on each worker are measured and, from the trickle's second second
on, the CPU of the supervisor and of both workers (an idle router uses ~0%;
the trickle costs a few %). Then the stuck browsers read again (and
reconnect if the router closed them, as mephisto-task does): each must get
all its packets, once, in order."""

import threading
import time

from faultlib import CpuWindow, assert_still_serving, in_order_without_gaps
from mephisto_fakes import backend_packet, browser_packet

FLOOD = 1200     # packets sent at once to each stuck browser
N = 1600         # at most, with the trickle that follows
TRICKLE_PERIOD = 0.04
PAD = "s" * 10000
RTT_LIMIT = 1.0   # seconds, for a heartbeat answer of another agent
CPU_LIMIT = 0.15  # share of one core, supervisor and each worker
CBU = "client_bound_live_update"


def read_back(env, stuck_id, conn, want):
    """What a stuck browser gets once it reads again, reconnecting (at most
    5 times) when its socket was closed; (packets, reconnects)."""
    got = [p for p in conn.recv_all(idle=2.0, limit=30.0) if p.get("packet_type") == CBU]
    reconnects = 0
    while conn.closed and reconnects < 5 and len(got) < want:
        reconnects += 1
        conn = env.raw(None)
        conn.send_json(browser_packet("alive", stuck_id))
        got += [p for p in conn.recv_all(idle=2.0, limit=30.0)
                if p.get("packet_type") == CBU]
    return got, reconnects


def test_stuck_browsers_do_not_starve_the_others(env):
    r = env.router(max_agent_queue=N)  # room for all of them
    be = env.backend(want_worker=2)
    stuck = {}
    for slot in (1, 2):
        sid = "agent-stuck-%d" % slot
        c = env.raw(slot, rcvbuf=16 * 1024)
        c.send_json(browser_packet("alive", sid))
        up = c.recv_json(5)
        assert up["packet_type"] == "update_status", up
        stuck[sid] = c
    a = env.browser(agent_id="agent-other-1", want_worker=1)
    b = env.browser(agent_id="agent-other-2", want_worker=2)
    a.alive()
    b.alive()
    pids = r.workers_by_slot()

    # heartbeats of the others, measured all along
    rtts = {"a": [], "b": []}
    errors = []
    stop = threading.Event()

    def beat(name, br):
        for _ in range(2000):
            if stop.is_set():
                return
            t0 = time.monotonic()
            try:
                br.heartbeat(timeout=25)
            except Exception as e:  # noqa: BLE001 - reported below
                errors.append("%s: %r after %.1f s" % (name, e, time.monotonic() - t0))
                return
            rtts[name].append(time.monotonic() - t0)
            time.sleep(0.1)
    threads = [threading.Thread(target=beat, args=(n, x), daemon=True)
               for n, x in (("a", a), ("b", b))]
    for t in threads:
        t.start()
    sent = 0
    try:
        for k in range(FLOOD):
            for sid in stuck:
                be.send(backend_packet(CBU, sid, {"k": k, "pad": PAD}))
            sent += 1
        # then a trickle, as a live task goes on, while CPU is measured
        cpu = None
        t_end = time.monotonic() + 7.0
        for k in range(FLOOD, N):
            if cpu is None and time.monotonic() > t_end - 6.0:
                cpu = CpuWindow([r.pid, pids[1], pids[2]])
            if time.monotonic() > t_end:
                break
            for sid in stuck:
                be.send(backend_packet(CBU, sid, {"k": k, "pad": PAD}))
            sent += 1
            time.sleep(TRICKLE_PERIOD)
        shares = cpu.shares()
    finally:
        stop.set()
        for t in threads:
            t.join(30)

    back = {sid: read_back(env, sid, c, sent) for sid, c in stuck.items()}
    assert_still_serving(r)
    problems = []
    if errors:
        problems.append("heartbeats of the other agents failed: %s" % errors)
    worst = {n: round(max(v), 3) if v else None for n, v in rtts.items()}
    if not all(v is not None and v < RTT_LIMIT for v in worst.values()):
        problems.append("slowest heartbeat answer of another agent: %s s (limit "
                        "%s s; %d and %d heartbeats)" % (worst, RTT_LIMIT,
                                                         len(rtts["a"]), len(rtts["b"])))
    if not all(v < CPU_LIMIT for v in shares.values()):
        problems.append("CPU while browsers do not read (share of one core, limit "
                        "%.0f%%): supervisor %.0f%%, worker 1 %.0f%%, worker 2 %.0f%%"
                        % (100 * CPU_LIMIT, 100 * shares[r.pid], 100 * shares[pids[1]],
                           100 * shares[pids[2]]))
    for sid, (got, reconnects) in back.items():
        problem = in_order_without_gaps([p["data"]["k"] for p in got], sent)
        if problem is not None:
            problems.append("%s's packets (%d reconnects): %s" % (sid, reconnects, problem))
    assert not problems, "\n".join(problems)
    assert be.is_open and be.ping_ok()
