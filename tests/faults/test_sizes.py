"""3. Oversized ids and sizes (issue 9): subject ids near the message
limit, a max_message_bytes far below backend_max_frame_bytes, and the
combinations of size keys that cannot work, which --check-config must
refuse (or the router must make work)."""

import time
import uuid

import pytest
import requests

from faultlib import assert_still_serving
from mephisto_fakes import backend_packet, of_type, post_json

KIB = 1024
MIB = 1024 * 1024


def huge_id(n, tag):
    head = "agent-%s-%s-" % (tag, uuid.uuid4().hex[:6])
    return head + "h" * (n - len(head))


def test_huge_subject_ids_keep_the_backend_channel(env):
    """Agents whose ids are ~900 KB (each packet fits max_message_bytes
    1M): every return_statuses would exceed the IPC bound and the backend's
    1 MiB frame limit (observed). The router may refuse such ids; either
    way the backend's channel must keep working and get valid
    return_statuses no larger than backend_max_frame_bytes (the fake
    backend closes 1009 on a larger frame, like Mephisto's)."""
    r = env.router()  # max_message_bytes = backend_max_frame_bytes = 1M
    be = env.backend()
    normal = env.browser(agent_id="agent-normal-" + uuid.uuid4().hex[:6])
    normal.alive()
    huge = []
    for i in range(3):
        b = env.browser(agent_id=huge_id(900 * KIB, str(i)))
        b.send_packet("alive")
        # the router may take the id, or refuse it (dropped and logged)
        for p in b.collect(1.0):
            assert p.get("packet_type") != "update_status" or \
                p.get("subject_id") == b.agent_id, "an update_status for another id"
        huge.append(b)
    for attempt in range(2):
        st = be.statuses(timeout=10)
        assert st.get(normal.agent_id) == "none", (
            "return_statuses lacks the normal agent: %d entries" % len(st))
    assert be.is_open and not be.closed, "backend channel closed (%s)" % be.close_code
    # the channel still carries traffic both ways
    normal.send_packet("mephisto_bound_live_update", {"after": "huge"})
    be.wait_for(lambda p: p["data"].get("after") == "huge")
    be.send(backend_packet("client_bound_live_update", normal.agent_id, {"x": 1}))
    assert normal.recv_until(of_type("client_bound_live_update"))["data"] == {"x": 1}
    for b in huge:  # their sockets still work (for a plain id at least)
        assert b.heartbeat(subject_id="agent-plain-" + uuid.uuid4().hex[:6])
    assert_still_serving(r)
    assert be.ping_ok() and be.connections == 1


def start_or_refused(r, timeout=10.0):
    """Start r; returns None once it serves, or the exit code if it stops
    first (it refused its configuration)."""
    r.start(wait=False)
    deadline = time.monotonic() + timeout
    for _ in range(int(timeout / 0.05) + 10):
        rc = r.proc.poll()
        if rc is not None:
            return rc
        try:
            if r.get("/is_alive", timeout=1).status_code == 200:
                r.wait_workers(2)
                return None
        except Exception:
            pass
        if time.monotonic() > deadline:
            break
        time.sleep(0.05)
    raise AssertionError("router neither served nor exited\n" + r.log_tail())


def submit(r, agent, size, timeout=20):
    """POST a submit_task of about size bytes; (status or None, text)."""
    try:
        resp = post_json(r.url, "/submit_task",
                         {"USED_AGENT_ID": agent, "final_data": big_final_data(size),
                          "client_timestamp": time.time()}, timeout=timeout)
    except requests.RequestException as e:
        return None, "no answer: %r" % e
    return resp.status_code, resp.text[:200]


def wait_unit(be, agent, timeout):
    """The backend's submit_unit for agent; fails at once if the channel
    closes first (it would never come)."""
    deadline = time.monotonic() + timeout
    for _ in range(int(timeout / 0.1) + 10):
        got = be.received(of_type("submit_unit", agent))
        if got:
            return got[0]
        assert not be.closed, "the router closed the backend's channel (code %s)" \
            " instead of delivering the submission" % be.close_code
        if time.monotonic() > deadline:
            break
        time.sleep(0.1)
    raise AssertionError("no submit_unit for %s within %.0f s" % (agent, timeout))


def big_final_data(size):
    return {"pad": "p" * size, "tail": "end"}


def test_large_post_with_small_max_message_bytes(env):
    """max_message_bytes 64K (WebSocket messages), backend_max_frame_bytes
    1M, and a legitimate 600 KB submit_task (observed: the worker is
    SIGKILLed for a broken IPC stream). Either the configuration is refused
    at start, or the POST is answered 200 and reaches the backend intact."""
    r = env.router(start=False, max_message_bytes="64K",
                   backend_max_frame_bytes="1M", max_body_bytes="4M")
    rc = start_or_refused(r)
    if rc is not None:
        assert rc == 2, "exit %s\n%s" % (rc, r.log_tail())
        return
    be = env.backend()
    agent = "agent-big-" + uuid.uuid4().hex[:6]
    results = []
    for size in (100 * KIB, 300 * KIB, 600 * KIB, 900 * KIB):
        results.append((size,) + submit(r, agent + str(size), size))
    r.check_workers()
    for size, status, text in results:
        assert status == 200, "a %d-byte submit_task: %s %s" % (size, status, text)
        unit = wait_unit(be, agent + str(size), 10)
        assert len(unit["data"]["pad"]) == size and unit["data"]["tail"] == "end"
    assert_still_serving(r)
    assert be.is_open and be.ping_ok()


# combinations of size keys whose packets could not cross the router as it
# was built (the IPC bound was 2 x max_message_bytes + 64 KiB; a connection's
# send bound is 4 x max_message_bytes, at least 1 MiB)
UNWORKABLE = [
    pytest.param({"max_message_bytes": "256", "backend_max_frame_bytes": "4M",
                  "max_body_bytes": "8M"}, 4 * MIB, id="msg256-frame4M"),
    pytest.param({"max_message_bytes": "64K", "backend_max_frame_bytes": "3M",
                  "max_body_bytes": "8M"}, 3 * MIB, id="msg64K-frame3M"),
]


@pytest.mark.parametrize("keys,frame", UNWORKABLE)
def test_check_config_refuses_what_cannot_work(env, cli, keys, frame):
    """backend_max_frame_bytes larger than what the IPC bound can carry:
    `--check-config` (and a start) must refuse it with exit 2 naming the
    keys, unless the router really carries a packet of that size (then a
    POST at 90% of backend_max_frame_bytes must reach the backend)."""
    r = env.router(start=False, **keys)
    res = cli(["--check-config", "--config", str(r.config_path)])
    assert not res.timed_out, res
    if res.returncode == 2:
        assert "backend_max_frame_bytes" in res.stderr or \
            "max_message_bytes" in res.stderr, res
        started = cli(["--config", str(r.config_path)], timeout=5)
        assert started.returncode == 2, "refused by --check-config but starts: %r" % started
        return
    assert res.returncode == 0, res
    # accepted: then it must work
    assert start_or_refused(r) is None, r.log_tail()
    be = env.backend(max_size=frame)
    size = int(frame * 0.9)
    agent = "agent-frame-" + uuid.uuid4().hex[:6]
    status, text = submit(r, agent, size)
    r.check_workers()
    assert status == 200, (
        "--check-config accepted %s, but a %d-byte submit_task got %s: %s"
        % (keys, size, status, text))
    unit = wait_unit(be, agent, 15)
    assert len(unit["data"]["pad"]) == size
    assert_still_serving(r)
