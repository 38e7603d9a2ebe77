"""6. A stopped worker (SIGSTOP) while traffic flows to it (issue 9;
observed: the supervisor grows from 7 to 52 MB in 20 s, and nothing ever
replaces the worker).

The backend, on worker 1, sends 8 KB packets to an agent attached to
worker 2, which is stopped: what the supervisor buffers for worker 2 must
stay bounded, and with `ipc_stall_timeout` (seconds; a new key) the
supervisor must replace a worker that has not read its IPC for that long."""

import socket
import threading
import time

from conftest import is_running, wait_until
from faultlib import WSClosed, assert_still_serving, rss_mb
from mephisto_fakes import backend_packet, browser_packet

PAD = "m" * 8000
GROWTH_LIMIT_MB = 20.0


def flood(be, agent, seconds, rate_packets=1000, stop=None):
    """Send agent 8 KB live updates at about rate_packets/s for seconds
    (bounded); returns how many were sent."""
    sent = 0
    t_end = time.monotonic() + seconds
    for k in range(int(seconds * rate_packets) + 1):
        if time.monotonic() > t_end or (stop is not None and stop.is_set()):
            break
        be.send(backend_packet("client_bound_live_update", agent, {"k": k, "pad": PAD}))
        sent += 1
        if k % 50 == 49:
            time.sleep(0.05)
    return sent


def peak_rss(pid, seconds, stop=None):
    peak = rss_mb(pid) or 0.0
    t_end = time.monotonic() + seconds
    for _ in range(int(seconds / 0.1) + 10):
        if time.monotonic() > t_end or (stop is not None and stop.is_set()):
            break
        peak = max(peak, rss_mb(pid) or 0.0)
        time.sleep(0.1)
    return peak


class Reader:
    """A raw WebSocket agent that reads and counts everything it gets, on a
    thread (so it is never the slow reader of test_slow_reader.py)."""

    def __init__(self, env, agent_id, slot):
        self.agent_id = agent_id
        self.ws = env.raw(slot)
        self.ws.send_json(browser_packet("alive", agent_id))
        assert self.ws.recv_json(5)["packet_type"] == "update_status"
        self.count = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        env.cleanups.append(self.close)

    def _run(self):
        for _ in range(10000000):
            if self.stop.is_set() or self.ws.closed:
                return
            try:
                self.ws.recv_message(0.2)
                self.count += 1
            except (socket.timeout, TimeoutError):
                continue
            except (WSClosed, OSError):
                return

    def close(self):
        self.stop.set()
        self.thread.join(3)


def start_scene(env, **keys):
    # max_agent_queue 100: what the router may legitimately keep for an
    # agent without a socket is at most 100 x 8 KB
    k = {"max_agent_queue": 100}
    k.update(keys)
    r = env.router(**k)
    be = env.backend(want_worker=1)
    b = Reader(env, "agent-on-stopped", 2)
    other = env.browser(agent_id="agent-on-running", want_worker=1)
    other.alive()
    return r, be, b, other


def test_stopped_worker_keeps_supervisor_memory_bounded(env):
    # ipc_buffer_bytes 3M: the smallest the router takes with 1M messages
    # (one IPC message of the largest packet), so what it may hold for a
    # worker (a few times that) stays well under the limit
    r, be, b, other = start_scene(env, ipc_buffer_bytes="3M")
    base = rss_mb(r.pid)
    # stopped on purpose: the supervisor may replace it (ipc_stall_timeout),
    # which the guard then accepts; what is judged here is the memory
    r.expect_worker_death(2, None)
    pid2 = r.stop_worker(2)
    env.cleanups.append(lambda: r.resume_worker(pid2))
    peak = [base]
    stop = threading.Event()
    watcher = threading.Thread(target=lambda: peak.__setitem__(0, peak_rss(r.pid, 30, stop)),
                               daemon=True)
    watcher.start()
    try:
        sent = flood(be, b.agent_id, 6.0)
        slow = []
        for _ in range(3):  # the running worker's agents are served meanwhile
            t0 = time.monotonic()
            if not other.served() or time.monotonic() - t0 > 1.0:
                slow.append(round(time.monotonic() - t0, 2))
        time.sleep(1.0)
    finally:
        stop.set()
        watcher.join(5)
        r.resume_worker(pid2)
    growth = peak[0] - base
    assert growth < GROWTH_LIMIT_MB, (
        "supervisor memory grew %.1f MB (%.1f -> %.1f MB) while %d packets of 8 KB "
        "(%.0f MB) went to a stopped worker (limit %.0f MB)"
        % (growth, base, peak[0], sent, sent * 8e-3, GROWTH_LIMIT_MB))
    assert not slow, "an agent of the running worker was not served: %s" % slow
    assert_still_serving(r)


def test_stalled_worker_is_replaced_after_ipc_stall_timeout(env):
    """With ipc_stall_timeout = 2, a worker that has not read its IPC for
    2 s is killed and restarted (declared to the worker-death guard as the
    supervisor's own kill), the supervisor's memory stays bounded, and the
    agents of the replaced worker can reconnect."""
    r, be, b, other = start_scene(env, ipc_stall_timeout=2)
    base = rss_mb(r.pid)
    r.expect_worker_death(2, None)  # the supervisor ends it, by whatever means
    pid2 = r.stop_worker(2)
    env.cleanups.append(lambda: r.resume_worker(pid2))
    sent = flood(be, b.agent_id, 3.0)

    def replaced():
        p = r.workers_by_slot().get(2)
        return p is not None and p != pid2 and not is_running(pid2)
    ok = wait_until(replaced, 8.0)
    peak = max(rss_mb(r.pid) or 0.0, base)
    r.resume_worker(pid2)
    assert ok, "stopped worker 2 (pid %d) not replaced within 2 + 8 s: %s" % (
        pid2, r.describe_children())
    assert peak - base < GROWTH_LIMIT_MB, (
        "supervisor memory grew %.1f MB while %d packets went to a stopped worker"
        % (peak - base, sent))
    r.wait_workers(2)
    assert_still_serving(r)
    b.close()
    again = env.browser(agent_id=b.agent_id)
    assert again.alive()["subject_id"] == b.agent_id
    assert again.served() and other.served()
