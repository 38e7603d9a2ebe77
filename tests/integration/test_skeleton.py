"""Integration tests of the router skeleton (issue 2): command line, config,
processes (prefork, respawn, reload, shutdown), HTTP endpoints, static files
and WebSocket basics. Everything targets 127.0.0.1 only."""

import concurrent.futures
import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from conftest import (WSClient, free_port, group_members, is_running,
                      keepalive_connection, read_cmdline, read_stat, require_binary,
                      wait_until)


def packet(n=0, pad="", ts=None):
    return json.dumps({
        "packet_type": "mephisto_bound_live_update",
        "subject_id": "integration-test-agent",
        "data": {"n": n, "pad": pad},
        "client_timestamp": time.time() if ts is None else ts,
    })


def packet_of_size(size):
    """A valid JSON packet of exactly size bytes."""
    ts = round(time.time(), 3)
    base = len(packet(0, "", ts))
    assert size >= base
    p = packet(0, "a" * (size - base), ts)
    assert len(p.encode()) == size
    return p


def worker_header(resp):
    v = resp.headers.get("X-Router-Worker")
    assert v is not None, "no X-Router-Worker header on %s %s (headers %s)" % (
        resp.request.method, resp.url, dict(resp.headers))
    assert v.strip().isdigit(), "X-Router-Worker is not a number: %r" % v
    return int(v)


def media_type(resp):
    return resp.headers.get("Content-Type", "").split(";")[0].strip().lower()


def raw_http(port, request_bytes, timeout=5.0):
    """Send raw bytes, read the answer until close; returns bytes."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(request_bytes)
        chunks = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                b = s.recv(65536)
            except socket.timeout:
                break
            if not b:
                break
            chunks.append(b)
        return b"".join(chunks)


def pids_alive(pids):
    return [p for p in pids if is_running(p)]


# ==========================================================================
# 1. static files

STATIC_CASES = [
    ("/index.html", "index.html", ("text/html",)),
    ("/style.css", "style.css", ("text/css",)),
    ("/app.js", "app.js", ("application/javascript", "text/javascript",
                           "application/x-javascript")),
    ("/data.json", "data.json", ("application/json",)),
    ("/data.qzx9", "data.qzx9", ("application/octet-stream",)),
    ("/sub/page.html", "sub/page.html", ("text/html",)),
    ("/sub/deeper/note.txt", "sub/deeper/note.txt",
     ("text/plain", "application/octet-stream")),
]


def test_static_files(router):
    for path, rel, types in STATIC_CASES:
        r = router.get(path)
        assert r.status_code == 200, "%s -> %d" % (path, r.status_code)
        assert r.content == router.static_files[rel], "wrong body for %s" % path
        assert media_type(r) in types, "%s served as %r, expected one of %s" % (
            path, r.headers.get("Content-Type"), types)
        cc = [t.strip().lower() for t in r.headers.get("Cache-Control", "").split(",")]
        assert "no-cache" in cc, "%s: Cache-Control %r" % (
            path, r.headers.get("Cache-Control"))
        assert worker_header(r) in (1, 2)


def test_root_serves_index(router):
    r = router.get("/")
    assert r.status_code == 200
    assert r.content == router.static_files["index.html"]
    assert media_type(r) == "text/html"
    assert "no-cache" in r.headers.get("Cache-Control", "").lower()
    assert worker_header(r) in (1, 2)


def test_missing_file_404(router):
    for path in ("/nope.html", "/sub/nope.js", "/no/such/dir/x.css"):
        r = router.get(path)
        assert r.status_code == 404, "%s -> %d" % (path, r.status_code)
        assert worker_header(r) in (1, 2)


def test_no_escape_from_static_dir(router):
    # the config file sits next to static_dir: it must never be served
    secret = router.config_path.read_bytes()
    for target in (b"/../router.conf", b"/%2e%2e/router.conf",
                   b"/sub/../../router.conf", b"/..%2frouter.conf"):
        ans = raw_http(router.port, b"GET " + target + b" HTTP/1.1\r\n"
                       b"Host: 127.0.0.1\r\nConnection: close\r\n\r\n")
        assert ans, "no answer for %r" % target
        status = ans.split(b"\r\n", 1)[0]
        assert secret not in ans, "%r served the config file (%r)" % (target, status)


# ==========================================================================
# 2. endpoints

def test_is_alive(router):
    r = router.get("/is_alive")
    assert r.status_code == 200
    assert media_type(r) == "application/json"
    assert r.json() == {"status": "Alive!"}
    assert worker_header(r) in (1, 2)


def test_get_timestamp(router):
    before = time.time() * 1000
    r = router.get("/get_timestamp")
    after = time.time() * 1000
    assert r.status_code == 200
    assert worker_header(r) in (1, 2)
    body = r.json()
    ts = body.get("timestamp")
    assert isinstance(ts, (int, float)) and not isinstance(ts, bool), body
    assert before - 3000 <= ts <= after + 3000, (
        "timestamp %r not within 3 s of now (%r..%r); ms expected" % (ts, before, after))


# ==========================================================================
# 3. more than one worker answers

def test_requests_spread_over_workers(router):
    seen = {}
    total = 0
    deadline = time.monotonic() + 10
    with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
        while total < 400 and time.monotonic() < deadline and set(seen) != {1, 2}:
            futs = [pool.submit(router.get, "/is_alive") for _ in range(8)]
            for f in futs:
                r = f.result()
                assert r.status_code == 200
                w = worker_header(r)
                seen[w] = seen.get(w, 0) + 1
            total += len(futs)
    assert set(seen) <= {1, 2}, "unexpected worker slots %s" % seen
    assert set(seen) == {1, 2}, (
        "after %d requests on new connections only workers %s answered"
        % (total, seen))


# ==========================================================================
# 4. processes

def test_process_tree(router):
    by_slot = router.workers_by_slot()
    assert sorted(by_slot) == [1, 2]
    members = group_members(router.pgid)
    assert sorted(members) == sorted([router.pid] + list(by_slot.values())), (
        "expected supervisor + 2 workers, process group holds %s"
        % ["%d:%s" % (p, " ".join(read_cmdline(p))) for p in members])
    for slot, pid in by_slot.items():
        st = read_stat(pid)
        assert st[2] == router.pid
        args = read_cmdline(pid)
        assert args[-2:] == ["--worker", str(slot)], args
        # named as the router, not "exe" (it runs /proc/self/exe)
        assert st[0] == "mephisto-router", st
    assert "--worker" not in read_cmdline(router.pid)


# ==========================================================================
# 5. a killed worker is respawned, the other one's WebSocket survives

def test_worker_respawn_keeps_other_websocket(router_factory):
    r = router_factory(log_level="debug")
    for keep in (1, 2):
        victim = 3 - keep
        ws = r.ws_on_slots({1, 2})
        by_slot = r.workers_by_slot()
        old_pid = by_slot[victim]
        kept = ws[keep]
        kept.ping()
        assert r.kill_worker(victim) == old_pid  # SIGKILL, declared

        def respawned():
            cur = r.workers_by_slot()
            return cur.get(victim) not in (None, old_pid) and cur
        cur = wait_until(respawned, 3.0)
        assert cur, "slot %d (pid %d) not respawned within 3 s; children %s" % (
            victim, old_pid, r.describe_children())
        assert cur[keep] == by_slot[keep], "the other worker changed pid"
        assert not is_running(old_pid)
        assert len(r.worker_pids()) == 2, r.describe_children()
        # the killed worker's WebSocket is gone
        assert ws[victim].wait_closed(3.0) is not None, \
            "WebSocket of the killed worker still open"
        # the kept one still works, both ways
        assert kept.ping_ok(), "WebSocket on worker %d broken by respawn of %d" % (
            keep, victim)
        off = len(r.log())
        kept.send(packet(1))
        assert kept.ping_ok(), "WebSocket closed after sending a frame"
        assert r.wait_log("ws frame", 2.0, start=off), \
            "no 'ws frame' in the log after a frame on the kept WebSocket"
        assert kept.is_open
        assert r.get("/is_alive").status_code == 200
        kept.close()


# ==========================================================================
# 6. SIGHUP resizes the pool live

def test_sighup_resize_keeps_worker1_websocket(router_factory):
    r = router_factory(shutdown_timeout=2)
    ws = r.ws_on_slots({1, 2})
    ws1, ws2 = ws[1], ws[2]  # ws2 is closed by the shrink
    pid1 = r.workers_by_slot()[1]

    r.write_config(workers=4)
    r.signal(signal.SIGHUP)
    by = r.wait_workers(4, timeout=10)
    assert by[1] == pid1, "worker 1 was restarted by the grow"
    assert ws1.ping_ok(), "WebSocket on worker 1 broken by SIGHUP 2 -> 4"
    assert r.get("/is_alive").status_code == 200

    r.write_config(workers=1)
    r.signal(signal.SIGHUP)
    by = r.wait_workers(1, timeout=2 + 6)
    assert by[1] == pid1, "worker 1 was restarted by the shrink"
    assert r.proc.poll() is None
    assert ws1.ping_ok(), "WebSocket on worker 1 broken by SIGHUP 4 -> 1"
    ws1.send(packet(2))
    assert ws1.ping_ok()
    for _ in range(5):
        resp = r.get("/is_alive")
        assert resp.status_code == 200 and worker_header(resp) == 1
    assert ws2.wait_closed(3.0) is not None, \
        "WebSocket on the stopped worker 2 still open"
    assert group_members(r.pgid) == sorted([r.pid, pid1])


# ==========================================================================
# 7. SIGHUP with a broken config keeps the old one

@pytest.mark.parametrize("key,value,needle", [
    ("bogus_key", "1", "bogus_key"),
    ("workers", "lots", "lots"),
], ids=["unknown_key", "bad_workers"])
def test_sighup_bad_config_keeps_running(router_factory, key, value, needle):
    r = router_factory()
    before = r.workers_by_slot()
    off = len(r.log())
    r.write_config(**{key: value})
    r.signal(signal.SIGHUP)
    assert r.wait_log(needle, 3.0, start=off), \
        "the log does not mention the bad config (%r)" % needle
    time.sleep(0.5)
    assert r.proc.poll() is None, "router exited on a bad config reload"
    assert r.get("/is_alive").status_code == 200
    assert r.workers_by_slot() == before
    r.write_config(bogus_key=None)
    # still reloadable afterwards
    r.write_config(workers=3)
    r.signal(signal.SIGHUP)
    by = r.wait_workers(3, timeout=10)
    assert by[1] == before[1] and by[2] == before[2]


# ==========================================================================
# 8. SIGTERM / SIGINT: graceful exit 0, nothing left

@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT],
                         ids=["SIGTERM", "SIGINT"])
def test_graceful_shutdown(router_factory, sig):
    shutdown_timeout = 2
    r = router_factory(shutdown_timeout=shutdown_timeout)
    pids = [r.pid] + r.worker_pids()
    assert len(pids) == 3
    ws = r.ws()
    ws.ping()
    conns = [keepalive_connection(r.port) for _ in range(2)]
    try:
        t0 = time.monotonic()
        r.signal(sig)
        try:
            rc = r.proc.wait(timeout=shutdown_timeout + 4)
        except subprocess.TimeoutExpired:
            rc = None
        elapsed = time.monotonic() - t0
    finally:
        for c in conns:
            c.close()
    assert rc == 0, "exit status %r after %s (%.1f s)" % (rc, sig.name, elapsed)
    assert elapsed <= shutdown_timeout + 2, (
        "took %.2f s to exit, shutdown_timeout is %s" % (elapsed, shutdown_timeout))
    assert wait_until(lambda: not pids_alive(pids), 1.0), \
        "processes left after exit: %s" % pids_alive(pids)
    assert not group_members(r.pgid)


# ==========================================================================
# 9. supervisor killed: workers follow

def test_supervisor_sigkill_takes_workers(router):
    workers = router.worker_pids()
    assert len(workers) == 2
    router.signal(signal.SIGKILL)
    router.proc.wait(timeout=5)
    gone = wait_until(lambda: not pids_alive(workers), 3.0)
    assert gone, "workers still alive 3 s after the supervisor's SIGKILL: %s" % (
        pids_alive(workers))


# ==========================================================================
# 10. command line and config errors

def valid_config_lines(tmp_path, port):
    static = tmp_path / "static"
    static.mkdir(exist_ok=True)
    (static / "index.html").write_text("x")
    return [
        "# test config",
        "listen_address = 127.0.0.1",
        "port = %d" % port,
        "workers = 2",
        "static_dir = %s" % static,
        "state_path = %s" % (tmp_path / "state.db"),
        "upload_dir = %s/" % tmp_path,
    ]


def one_error_line(res):
    lines = [l for l in res.stderr.splitlines() if l.strip()]
    assert len(lines) == 1, "expected ONE line on stderr, got %d: %r" % (
        len(lines), res)
    assert lines[0].startswith("mephisto-router: "), lines[0]
    return lines[0]


BAD_CONFIGS = [
    # (name, extra line appended after the valid lines, needles)
    ("unknown_key", "foo = 1", ["unknown key", "foo"]),
    ("bad_workers", "workers = abc", ["workers", "abc"]),
    ("workers_too_many", "workers = 65", ["workers", "65"]),
    ("bad_log_level", "log_level = loud", ["log_level", "loud"]),
    ("bad_size", "max_message_bytes = 12Q", ["max_message_bytes", "12Q"]),
    ("bad_duration", "shutdown_timeout = soon", ["shutdown_timeout", "soon"]),
    ("duplicated_key", "port = 4242", ["duplicate", "port"]),
    ("no_equals", "this is not a setting", []),
]


@pytest.mark.parametrize("check_only", [False, True], ids=["start", "check"])
@pytest.mark.parametrize("name,bad,needles", BAD_CONFIGS,
                         ids=[c[0] for c in BAD_CONFIGS])
def test_bad_config_exit_2(cli, tmp_path, name, bad, needles, check_only):
    lines = valid_config_lines(tmp_path, free_port())
    if name == "bad_workers" or name == "workers_too_many":
        lines = [l for l in lines if not l.startswith("workers")]
    lines.append(bad)
    lineno = len(lines)
    path = tmp_path / "bad.conf"
    path.write_text("\n".join(lines) + "\n")
    args = ["--config", str(path)] + (["--check-config"] if check_only else [])
    res = cli(args)
    assert not res.timed_out, "router did not exit on a bad config: %r" % res
    assert res.returncode == 2, res
    line = one_error_line(res)
    assert "%s:%d:" % (path, lineno) in line, (
        "error line does not name %s:%d: %r" % (path, lineno, line))
    for n in needles:
        assert n in line, "error line lacks %r: %r" % (n, line)


def test_missing_config_file(cli, tmp_path):
    path = tmp_path / "does-not-exist.conf"
    res = cli(["--config", str(path)])
    assert not res.timed_out, res
    assert res.returncode == 2, res
    line = one_error_line(res)
    assert str(path) in line, line


def test_busy_port(cli, tmp_path):
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        s.listen(5)
        port = s.getsockname()[1]
        path = tmp_path / "busy.conf"
        path.write_text("\n".join(valid_config_lines(tmp_path, port)) + "\n")
        res = cli(["--config", str(path)])
    assert not res.timed_out, "router did not exit on a busy port: %r" % res
    assert res.returncode == 2, res
    line = one_error_line(res)
    assert "cannot listen on 127.0.0.1:%d" % port in line, line
    assert "Address already in use" in line, line


def test_check_config_ok(cli, tmp_path):
    port = free_port()
    path = tmp_path / "ok.conf"
    path.write_text("\n".join(valid_config_lines(tmp_path, port)) + "\n")
    res = cli(["--config", str(path), "--check-config"])
    assert not res.timed_out, res
    assert res.returncode == 0, res
    assert re.search(r"^port = %d$" % port, res.stdout, re.M), res
    assert re.search(r"^workers = 2$", res.stdout, re.M), res
    assert re.search(r"^listen_address = 127\.0\.0\.1$", res.stdout, re.M), res
    # nothing listens after a check
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", port)) != 0


def test_check_config_checks_the_database_as_the_start_does(cli, tmp_path):
    """A state_path that is not a database, or is one of a newer schema,
    fails --check-config as it fails the start (exit 2, the same reason)."""
    import sqlite3
    port = free_port()
    path = tmp_path / "db.conf"
    path.write_text("\n".join(valid_config_lines(tmp_path, port)) + "\n")
    db = tmp_path / "state.db"
    db.write_text("this is not a database\n" * 100)
    res = cli(["--config", str(path), "--check-config"])
    assert res.returncode == 2 and "state_path %s" % db in res.stderr, res
    assert "not a database" in res.stderr, res
    start = cli(["--config", str(path)], timeout=10)
    assert start.returncode == 2 and "not a database" in start.stderr, start
    db.unlink()
    con = sqlite3.connect(str(db))
    con.execute("PRAGMA user_version = 99")
    con.close()
    res = cli(["--config", str(path), "--check-config"])
    assert res.returncode == 2 and "schema version 99 is newer" in res.stderr, res
    start = cli(["--config", str(path)], timeout=10)
    assert start.returncode == 2 and "schema version 99 is newer" in start.stderr, start
    # a database of this version passes, and the check leaves it as it was
    db.unlink()
    con = sqlite3.connect(str(db))
    con.execute("PRAGMA user_version = 2")
    con.close()
    before = db.read_bytes()
    assert cli(["--config", str(path), "--check-config"]).returncode == 0
    assert db.read_bytes() == before


def test_check_config_embedded_default(cli, tmp_path):
    res = cli(["--check-config"], cwd=tmp_path)
    assert res.returncode == 0, res
    assert re.search(r"^port = 3000$", res.stdout, re.M), res
    port = free_port()
    env = dict(os.environ, PORT=str(port))
    res = cli(["--check-config"], cwd=tmp_path, env=env)
    assert res.returncode == 0, res
    assert re.search(r"^port = %d$" % port, res.stdout, re.M), res


def test_help(cli):
    res = cli(["--help"])
    assert res.returncode == 0, res
    assert "--config" in res.stdout, res


def test_version(cli):
    res = cli(["--version"])
    assert res.returncode == 0, res
    assert res.stdout.startswith("mephisto-router "), res
    assert len(res.stdout.strip().split()) >= 2, res


def test_unknown_option(cli):
    res = cli(["--no-such-option"])
    assert not res.timed_out, res
    assert res.returncode == 2, res
    assert res.stderr.strip(), res


# ==========================================================================
# 11. PORT overrides the config

def test_port_env_overrides_config(router_factory):
    env_port = free_port()
    r = router_factory(env={"PORT": env_port})
    config_port = int(r.keys["port"])
    assert r.port == env_port != config_port
    resp = r.get("/is_alive")
    assert resp.status_code == 200
    with socket.socket() as s:
        s.settimeout(2)
        assert s.connect_ex(("127.0.0.1", config_port)) != 0, \
            "the config port also listens"


# ==========================================================================
# 12. WebSocket

def test_ws_text_frame_forwarded(router_factory):
    r = router_factory(log_level="debug")
    ws = r.ws()
    assert ws.is_open
    ws.ping()
    off = len(r.log())
    ws.send(packet(7))
    assert r.wait_log("ws frame", 2.0, start=off), \
        "no 'ws frame' line within 2 s of sending a frame"
    assert ws.ping_ok()


def test_ws_upgrade_carries_worker_header(router):
    ws = router.ws()
    assert ws.header_worker in (1, 2), (
        "upgrade answer headers: %s" % dict(ws.response_headers))
    assert router.ws_worker(ws) == ws.header_worker


def test_ws_default_client_settings(router):
    # what Mephisto's backend does: websockets defaults (permessage-deflate
    # offered, keepalive pings)
    c = WSClient(router.ws_url, compression="deflate", ping_interval=20)
    router.ws_clients.append(c)
    c.ping()
    c.send(packet(3))
    assert c.ping_ok()


def test_ws_too_big_frame_closes_1009(router_factory):
    r = router_factory(max_message_bytes="4K")
    other = r.ws()
    other.ping()
    ws = r.ws()
    ws.send(packet_of_size(1000))
    assert ws.ping_ok()
    ws.send(packet_of_size(8000))
    code = ws.wait_closed(5.0)
    assert code == 1009, "close code %r after a frame > max_message_bytes" % code
    # the router is fine afterwards
    assert r.get("/is_alive").status_code == 200
    assert other.ping_ok(), "another WebSocket was hurt by the big frame"
    other.send(packet(1))
    assert other.ping_ok()
    fresh = r.ws()
    assert fresh.ping_ok()
    assert r.proc.poll() is None


def test_ws_frame_size_limit_boundary(router_factory):
    r = router_factory(max_message_bytes="4K")
    ws = r.ws()
    ws.send(packet_of_size(4096))
    assert ws.ping_ok(), "a frame of exactly max_message_bytes was refused"
    ws.send(packet_of_size(4097))
    assert ws.wait_closed(5.0) == 1009


# ==========================================================================
# 13. the embedded default config

def test_embedded_default(router_factory, tmp_path):
    cwd = tmp_path / "cwd"
    (cwd / "static").mkdir(parents=True)
    index = b"<!doctype html><p>embedded-default-index</p>\n"
    (cwd / "static" / "index.html").write_bytes(index)
    port = free_port()
    r = router_factory(use_config=False, cwd=cwd, env={"PORT": port})
    assert r.port == port
    resp = r.get("/")
    assert resp.status_code == 200 and resp.content == index
    assert media_type(resp) == "text/html"
    db = Path(cwd) / "mephisto-router.db"
    assert wait_until(db.exists, 3.0), "no ./mephisto-router.db in %s: %s" % (
        cwd, sorted(os.listdir(cwd)))
    ncpu = {os.cpu_count(), len(os.sched_getaffinity(0))}
    assert len(r.workers_by_slot()) in ncpu, r.describe_children()
    pids = [r.pid] + r.worker_pids()
    rc = r.stop(timeout=5 + 3)
    assert rc == 0, "exit status %r on SIGTERM" % rc
    assert wait_until(lambda: not pids_alive(pids), 1.0), pids_alive(pids)


def test_worker_config_error_is_not_respawned(cli, tmp_path):
    """A worker that exits with the configuration-error code (here: an open
    file limit below max_connections) is not restarted in a loop: the
    router stops with exit 2 and says why."""
    import resource

    static = tmp_path / "static"
    static.mkdir()
    conf = tmp_path / "r.conf"
    conf.write_text("listen_address = 127.0.0.1\nport = %d\nworkers = 2\n"
                    "static_dir = %s\nstate_path = %s\nmax_connections = 5000\n"
                    % (free_port(), static, tmp_path / "s.db"))

    def low_fd_limit():
        resource.setrlimit(resource.RLIMIT_NOFILE, (512, 512))

    proc = subprocess.Popen(
        [require_binary(), "--config", str(conf)], stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        start_new_session=True, preexec_fn=low_fd_limit)
    try:
        out, _ = proc.communicate(timeout=15)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    text = out.decode(errors="replace")
    assert proc.returncode == 2, text
    assert "max_connections = 5000" in text and "limit is 512" in text, text
    assert "not restarting it" in text, text
    assert text.count("started (pid") == 2, text


def test_full_worker_leaves_connections_to_the_others(router_factory):
    """max_connections per worker: a full worker stops accepting instead of
    refusing, so connections go to the workers with room, and one waiting
    while every worker is full is served when a connection closes."""
    r = router_factory(max_connections=3)
    clients = [r.ws() for _ in range(6)]  # 2 workers x 3: every one opens
    for c in clients:
        assert c.ping_ok(), "a WebSocket was refused while a worker had room"
    assert sorted(r.ws_worker(c) for c in clients) == [1, 1, 1, 2, 2, 2]
    # Every worker is full: a new connection waits in the listen queue...
    with socket.create_connection(("127.0.0.1", r.port), timeout=5) as s:
        s.sendall(b"GET /is_alive HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        s.settimeout(0.5)
        with pytest.raises(socket.timeout):
            s.recv(1)
        # ...and is served once a connection closes.
        clients[0].close()
        s.settimeout(5)
        answer = b""
        with contextlib.suppress(socket.timeout):
            while b"Alive!" not in answer:
                chunk = s.recv(4096)
                if not chunk:
                    break
                answer += chunk
        assert b"200 OK" in answer and b"Alive!" in answer, answer


def test_version_names_commit_and_libraries(cli):
    res = cli(["--version"])
    first, second = res.stdout.splitlines()[:2]
    assert first.startswith("mephisto-router ") and "(commit " in first, res
    for lib in ("libwebsockets 4.1.6", "libevent ", "SQLite ", "jansson ",
                "msgpack-c ", "yajl ", "OpenSSL "):
        assert lib in second, (lib, res)


def test_install_and_uninstall(tmp_path):
    """make install into DESTDIR puts the binary, the unit, the config and
    the man page in place; make uninstall takes back all but the config."""
    repo = Path(__file__).resolve().parents[2]
    dest = tmp_path / "root"
    out = os.path.relpath(os.path.dirname(require_binary()), repo)
    run = lambda target: subprocess.run(  # noqa: E731
        ["make", "-s", "-C", str(repo), "OUT=" + out, "DESTDIR=" + str(dest),
         "PREFIX=/usr/local", "-o", "all", target],
        capture_output=True, text=True, timeout=120)
    res = run("install")
    assert res.returncode == 0, res.stderr
    installed = {"usr/local/bin/mephisto-router", "usr/local/share/man/man8/mephisto-router.8",
                 "etc/systemd/system/mephisto-router.service", "etc/mephisto-router.conf"}
    for path in installed:
        assert (dest / path).is_file(), path
    res = run("uninstall")
    assert res.returncode == 0, res.stderr
    left = {str(p.relative_to(dest)) for p in dest.rglob("*") if p.is_file()}
    assert left == {"etc/mephisto-router.conf"}, left


def test_systemd_unit_verifies(tmp_path):
    """systemd-analyze verify on the shipped unit (its binary path pointed at
    the build; --man=no: the man page is installed by make install), and the
    unit makes the folders the dist config names."""
    import shutil
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    repo = Path(__file__).resolve().parents[2]
    unit = (repo / "dist/systemd/mephisto-router.service").read_text()
    conf = (repo / "dist/mephisto-router.conf").read_text()
    for key in ("static_dir", "upload_dir", "state_path"):
        value = re.search(r"^%s\s*=\s*(\S+)" % key, conf, re.M).group(1)
        folder = value if key != "state_path" else os.path.dirname(value)
        rel = os.path.relpath(folder, "/var/lib")
        assert re.search(r"^StateDirectory=.*(^|\s)%s(\s|$)" % re.escape(rel), unit,
                         re.M) or rel == "mephisto-router", (key, rel)
        assert rel.split("/")[0] == "mephisto-router", (key, folder)
    path = tmp_path / "mephisto-router.service"
    path.write_text(unit.replace("/usr/local/bin/mephisto-router", require_binary()))
    res = subprocess.run([analyze, "--man=no", "verify", str(path)], capture_output=True,
                         text=True, timeout=30)
    assert res.returncode == 0 and not res.stderr.strip(), res
