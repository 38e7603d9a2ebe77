"""8. A full and a read-only state database (issue 9; observed: the
supervisor dies of SIGBUS, silently).

Full: state_path lives on a 4 MiB tmpfs mounted for the test (the tests run
as root here; without the right to mount, the test is skipped rather than
faked with RLIMIT_FSIZE, which would also hit the router's log and
uploads), which the test then fills with a file up to ENOSPC.
Read-only: the database, its -wal and -shm files and their folder are made
immutable with `chattr +i` while the router runs (root ignores chmod; the
immutable flag refuses writes to already open files as well, EPERM), and
made mutable again at teardown.

Meanwhile the backend goes away and comes back, agents stream live updates
and submit: the supervisor must not die, heartbeats are answered, live
traffic is routed (in memory, the README says), and a submission is
answered 200 only if it reaches the backend."""

import concurrent.futures
import contextlib
import errno
import os
import subprocess
import time
import uuid

import pytest

from faultlib import assert_still_serving, in_order_without_gaps, session

MBU = "mephisto_bound_live_update"


def mount_tmpfs(path, size="4m"):
    path.mkdir(parents=True, exist_ok=True)
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=%s,mode=0755" % size,
                          "tmpfs", str(path)], capture_output=True, timeout=10)
    if res.returncode != 0:
        pytest.skip("cannot mount a tmpfs here (%s): no faithful full disk"
                    % res.stderr.decode(errors="replace").strip())


def umount(path):
    subprocess.run(["umount", "-l", str(path)], capture_output=True, timeout=10)


def fill(path):
    """Write a file into path's filesystem until it is full; returns bytes."""
    n = 0
    with open(path / "filler", "wb") as f:
        for _ in range(100000):
            try:
                f.write(b"\0" * 65536)
                f.flush()
                n += 65536
            except OSError as e:
                assert e.errno == errno.ENOSPC, e
                break
    for _ in range(1000):  # the last few blocks too
        try:
            with open(path / ("crumb%d" % n), "wb") as f:
                f.write(b"\0" * 512)
            n += 512
        except OSError:
            break
    return n


def chattr(flag, paths):
    for p in paths:
        if os.path.exists(p):
            subprocess.run(["chattr", flag, str(p)], capture_output=True, timeout=10)


def storm(env, r, agents, be_gone, n_updates=150, n_submits=12):
    """With the backend away: live updates from every agent, then
    submissions; returns {marker: status} of the submissions."""
    assert be_gone.wait_closed(5)
    errors = []
    for k in range(n_updates):
        for b in agents:
            try:
                b.send_packet(MBU, {"k": k, "pad": "d" * 1000})
            except Exception as e:  # noqa: BLE001 - the check reports it
                errors.append("%s: %r" % (b.agent_id, e))
        if errors:
            break
    answers = {"live updates": errors[0][:200]} if errors else {}

    def submit(i):
        marker = "sub-%d-%s" % (i, uuid.uuid4().hex[:6])
        try:
            with session() as s:
                resp = s.post(r.url + "/submit_task",
                              json={"USED_AGENT_ID": "agent-" + marker,
                                    "final_data": {"marker": marker},
                                    "client_timestamp": time.time()},
                              timeout=8, headers={"Connection": "close"})
            return marker, resp.status_code
        except Exception as e:  # noqa: BLE001 - reported as not 200
            return marker, repr(e)[:80]
    # at once: a router may hold each one until it is durable (then 503)
    with concurrent.futures.ThreadPoolExecutor(n_submits) as pool:
        answers.update(pool.map(submit, range(n_submits)))
    return answers


def check_after(env, r, agents, answers, n_updates, heartbeat_times):
    """The supervisor lives, the backend gets back everything routed."""
    problems = []
    if r.proc.poll() is not None:
        problems.append("the supervisor exited: %s (%s)" % (
            r.proc.returncode, "; ".join(r.unexpected_deaths())))
        return problems
    slow = [round(t, 2) for t in heartbeat_times if t is None or t > 1.0]
    if slow:
        problems.append("heartbeats unanswered or slow: %s" % slow)
    be = env.backend()
    want = n_updates * len(agents)
    with contextlib.suppress(AssertionError):
        be.wait_n(lambda p: p.get("packet_type") == MBU, want, timeout=15)
    for b in agents:
        ks = [p["data"]["k"] for p in be.received(lambda p: p.get("packet_type") == MBU
                                                   and p["subject_id"] == b.agent_id)]
        problem = in_order_without_gaps(ks, n_updates)
        if problem:
            problems.append("live updates of %s: %s" % (b.agent_id, problem))
    ok = [m for m, st in answers.items() if st == 200]
    with contextlib.suppress(AssertionError):
        be.wait_n(lambda p: p.get("packet_type") == "submit_unit", len(ok), timeout=10)
    got = {p["data"].get("marker") for p in be.received(
        lambda p: p.get("packet_type") == "submit_unit")}
    lost = [m for m in ok if m not in got]
    if lost:
        problems.append("%d of %d submissions answered 200 never reached the "
                        "backend (answers: %s)" % (len(lost), len(ok),
                                                   sorted(set(map(str, answers.values())))))
    return problems


def timed_heartbeats(agents):
    out = []
    for b in agents:
        t0 = time.monotonic()
        try:
            b.heartbeat(timeout=5)
            out.append(time.monotonic() - t0)
        except Exception:  # noqa: BLE001 - reported
            out.append(None)
    return out


def scene(env, state_dir):
    r = env.router(state_path=str(state_dir / "state.db"))
    be = env.backend()
    agents = [env.browser(agent_id="agent-db-%d" % s, want_worker=s) for s in (1, 2)]
    for b in agents:
        b.alive()
        b.send_packet(MBU, {"warmup": True})
    be.wait_n(lambda p: p.get("packet_type") == MBU, 2)
    return r, be, agents


def test_full_filesystem_under_the_database(env, tmp_path):
    mnt = tmp_path / "small-fs"
    mount_tmpfs(mnt)
    env.cleanups.append(lambda: umount(mnt))
    r, be, agents = scene(env, mnt)
    be.close()
    filled = fill(mnt)
    answers = storm(env, r, agents, be)
    hb = timed_heartbeats(agents)
    time.sleep(2.5)  # the store retries its writes every second
    hb += timed_heartbeats(agents)
    problems = check_after(env, r, agents, answers, 150, hb)
    if r.proc.poll() is None:
        # space again: the router goes on
        for f in mnt.iterdir():
            if f.name.startswith(("filler", "crumb")):
                f.unlink()
        time.sleep(1.5)
        assert_still_serving(r)
    r.check_workers(settle=0)
    assert not problems, "state database on a full filesystem (%d bytes of filler):" \
        "\n  %s\n%s" % (filled, "\n  ".join(problems), r.log_tail(15))


def test_database_made_read_only_while_running(env, tmp_path):
    state_dir = tmp_path / "state"
    state_dir.mkdir()
    probe = state_dir / "probe"
    probe.write_text("x")
    res = subprocess.run(["chattr", "+i", str(probe)], capture_output=True, timeout=10)
    subprocess.run(["chattr", "-i", str(probe)], capture_output=True, timeout=10)
    if res.returncode != 0:
        pytest.skip("chattr +i does not work on %s: %s" % (state_dir, res.stderr))
    probe.unlink()
    r, be, agents = scene(env, state_dir)
    files = [state_dir / ("state.db" + x) for x in ("", "-wal", "-shm", "-journal")]
    frozen = files + [state_dir]
    env.cleanups.append(lambda: chattr("-i", frozen))
    try:
        chattr("+i", frozen)
        be.close()
        answers = storm(env, r, agents, be)
        hb = timed_heartbeats(agents)
        time.sleep(2.5)
        hb += timed_heartbeats(agents)
        problems = check_after(env, r, agents, answers, 150, hb)
    finally:
        chattr("-i", frozen)
    if r.proc.poll() is None:
        time.sleep(1.5)
        assert_still_serving(r)
    r.check_workers(settle=0)
    assert not problems, "state database made read-only:\n  %s\n%s" % (
        "\n  ".join(problems), r.log_tail(15))
