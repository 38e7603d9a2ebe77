"""A graceful stop (SIGTERM) while the backend reads slowly: every packet
reaches the backend once, across the stop and the restart on the same
state database (a drain used to refuse new sends to a closing socket,
which put back in its queue what the socket still wrote: 43 duplicates)."""

import json
import signal
import time

from conftest import WSClient, wait_until
from mephisto_fakes import browser_packet

ALIVE_BACKEND = json.dumps({"packet_type": "alive", "subject_id": "mephisto", "data": {}})


def updates(client, until, pause=0.0):
    got = []
    while time.monotonic() < until:
        try:
            p = json.loads(client.recv(timeout=1))
        except Exception:
            break
        if p.get("packet_type") == "mephisto_bound_live_update":
            got.append(p["data"]["n"])
            time.sleep(pause)
    return got


def test_drain_delivers_once(router_factory):
    r = router_factory(workers=1, shutdown_timeout=5)
    state = r.keys["state_path"]
    backend = WSClient(r.ws_url, max_size=None, max_queue=1, read_limit=4096)
    backend.send(ALIVE_BACKEND)
    assert wait_until(lambda: "Mephisto channel" in r.log(), 5)
    agent = WSClient(r.ws_url)
    n = 600
    for i in range(n):
        agent.send(json.dumps(browser_packet("mephisto_bound_live_update", "a1",
                                             {"n": i, "pad": "x" * 20000})))
    time.sleep(6)  # the backend reads nothing: its socket is full
    r.signal(signal.SIGTERM)
    time.sleep(0.5)
    first = updates(backend, time.monotonic() + 6, 0.01)
    assert r.proc.wait(timeout=15) == 0
    r2 = router_factory(workers=1, state_path=state)
    again = WSClient(r2.ws_url, max_size=None)
    again.send(ALIVE_BACKEND)
    second = updates(again, time.monotonic() + 6)
    assert first == sorted(first) and second == sorted(second)
    assert not set(first) & set(second), "delivered twice"
    # what the router took in was delivered: a prefix without a gap (the
    # tail it had not read from the agent's socket when it stopped is the
    # sender's to send again)
    got = sorted(first + second)
    assert got == list(range(len(got))), "lost"
    assert len(got) >= n // 2, "too few to tell (%d)" % len(got)
