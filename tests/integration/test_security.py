"""Security (issue 10) through the real binary: who may become the backend
channel (backend_allow, trusted_proxies), and log lines a client cannot
forge. 127.0.0.2 is a second loopback address (all of 127.0.0.0/8 is
loopback on Linux), so a refused source needs no other host."""

import json
import os
import socket
import stat
import subprocess
import time
from pathlib import Path

import requests

import websockets.exceptions

from conftest import WSClient, require_binary, wait_until
from mephisto_fakes import FakeBackend, browser_packet
from proclib import cpu_seconds  # tests/proclib.py, on sys.path through conftest

ALIVE_BACKEND = json.dumps({"packet_type": "alive", "subject_id": "mephisto",
                            "data": {}})


def closed_code(client, timeout=5):
    return client.wait_closed(timeout)


def test_backend_from_outside_backend_allow_is_refused(router_factory):
    r = router_factory(backend_allow="127.0.0.1")
    backend = FakeBackend(r.ws_url, poll_interval=None).connect()
    try:
        # an impostor from 127.0.0.2 says it is the backend: closed 1008
        impostor = WSClient(r.ws_url, local_addr=("127.0.0.2", 0))
        impostor.send(ALIVE_BACKEND)
        assert closed_code(impostor) == 1008
        # again and again from the same address: logged once (by each
        # worker), with the key to set
        for _ in range(6):
            again = WSClient(r.ws_url, local_addr=("127.0.0.2", 0))
            again.send(ALIVE_BACKEND)
            assert closed_code(again) == 1008
        lines = [l for l in r.log().splitlines() if "backend_allow" in l]
        assert 1 <= len(lines) <= 2, lines
        assert all("127.0.0.2" in l for l in lines)
        # the real channel was never displaced: an agent's update reaches it
        agent = WSClient(r.ws_url)
        agent.send(json.dumps(browser_packet("alive", "a1")))
        agent.recv()
        agent.send(json.dumps(browser_packet("mephisto_bound_live_update", "a1",
                                             {"n": 1})))
        backend.wait_for(lambda p: p.get("packet_type") ==
                         "mephisto_bound_live_update", what="the agent's update")
        agent.close()
    finally:
        backend.stop()


def test_backend_from_loopback_allowed_by_default(router_factory):
    r = router_factory()  # the embedded default: 127.0.0.0/8 and ::1
    client = WSClient(r.ws_url, local_addr=("127.0.0.2", 0))
    client.send(ALIVE_BACKEND)
    assert wait_until(lambda: "Mephisto channel" in r.log(), 5)
    assert client.is_open
    client.close()


def test_trusted_proxy_forwarded_for(router_factory):
    r = router_factory(backend_allow="10.9.9.9", trusted_proxies="127.0.0.1")
    # through the proxy from the allowed address (proxies append on the right)
    ok = WSClient(r.ws_url, extra_headers={"X-Forwarded-For": "1.2.3.4, 10.9.9.9"})
    ok.send(ALIVE_BACKEND)
    assert wait_until(lambda: "Mephisto channel" in r.log(), 5)
    assert ok.is_open
    # a client that forges the left part of the header gains nothing
    forged = WSClient(r.ws_url, extra_headers={"X-Forwarded-For": "10.9.9.9, 10.9.9.8"})
    forged.send(ALIVE_BACKEND)
    assert closed_code(forged) == 1008
    # the proxy's own address is not in backend_allow
    direct = WSClient(r.ws_url)
    direct.send(ALIVE_BACKEND)
    assert closed_code(direct) == 1008
    # an untrusted peer's X-Forwarded-For is not believed
    untrusted = WSClient(r.ws_url, local_addr=("127.0.0.2", 0),
                         extra_headers={"X-Forwarded-For": "10.9.9.9"})
    untrusted.send(ALIVE_BACKEND)
    assert closed_code(untrusted) == 1008
    ok.close()


def test_check_config_refuses_bad_address_lists(cli, tmp_path):
    conf = tmp_path / "bad.conf"
    conf.write_text("backend_allow = 127.0.0.1, not-an-address/99\n")
    res = cli(["--check-config", "--config", str(conf)])
    assert res.returncode != 0
    assert "backend_allow" in res.stderr


def test_agent_id_cannot_forge_a_log_line(router_factory):
    r = router_factory(reconnect_grace=0.3, log_level="debug")
    evil = "x\n2026-01-01T00:00:00.000Z error supervisor: FORGED"
    agent = WSClient(r.ws_url)
    agent.send(json.dumps(browser_packet("alive", evil)))
    agent.recv()
    agent.close()
    assert wait_until(lambda: "no reconnection" in r.log(), 5)
    lines = r.log().splitlines()
    assert not [l for l in lines if l.startswith("2026-01-01")]
    # the id stays inside the lines that name it, its newline written as \n
    forged = [l for l in lines if "FORGED" in l]
    assert forged and all("x\\n2026-01-01" in l for l in forged), forged


# ---- strict HTTP and fair limits ----

def raw_request(port, data, wait=5.0, then=None):
    """Send data on a new connection (then, if given, is called with the
    socket), and return everything the router answered."""
    s = socket.create_connection(("127.0.0.1", port), timeout=wait)
    try:
        s.sendall(data)
        if then is not None:
            then(s)
        out = b""
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            try:
                chunk = s.recv(65536)
            except socket.timeout:
                break
            if not chunk:
                break
            out += chunk
            if b"\r\n\r\n" in out and b"}" in out:
                break
        return out
    finally:
        s.close()


def status_of(answer):
    line = answer.split(b"\r\n", 1)[0]
    parts = line.split()
    return int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else None


SUBMIT = json.dumps({"USED_AGENT_ID": "a1", "final_data": {"x": 1}}).encode()


def post_head(length, extra=b""):
    return (b"POST /submit_task HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: " + str(length).encode() + b"\r\n" + extra + b"\r\n")


def test_transfer_encoding_with_content_length_is_400(router):
    answer = raw_request(router.port, post_head(len(SUBMIT),
                         b"Transfer-Encoding: chunked\r\n") + SUBMIT)
    assert status_of(answer) == 400, answer[:200]
    assert b"Transfer-Encoding" in answer


def test_content_length_must_be_digits(router):
    for bad in (b"+42", b" 42x", b"0x10", b"-1"):
        head = (b"POST /submit_task HTTP/1.1\r\nHost: x\r\n"
                b"Content-Type: application/json\r\nContent-Length: " + bad + b"\r\n\r\n")
        answer = raw_request(router.port, head)
        assert status_of(answer) == 400, (bad, answer[:200])


def test_trickling_body_is_cut_off(router_factory):
    r = router_factory(body_timeout=1, body_min_rate="1M")

    def trickle(s):
        for _ in range(20):  # 20 bytes over 6 s, far below the rate
            try:
                s.sendall(b" ")
            except OSError:
                return
            time.sleep(0.3)
    started = time.monotonic()
    answer = raw_request(r.port, post_head(1000), wait=8, then=trickle)
    assert status_of(answer) == 408, answer[:200]
    assert time.monotonic() - started < 7
    assert wait_until(lambda: "not complete in time" in r.log(), 3)
    assert r.get("/is_alive").status_code == 200


def test_json_body_over_the_frame_limit_is_413(router_factory):
    r = router_factory(backend_max_frame_bytes="16K")
    answer = raw_request(r.port, post_head(20000))
    assert status_of(answer) == 413, answer[:200]


def test_bodies_in_memory_are_bounded(router_factory):
    r = router_factory(workers=1, body_memory_bytes="64K", backend_max_frame_bytes="60K")
    held = socket.create_connection(("127.0.0.1", r.port), timeout=5)
    try:
        held.sendall(post_head(50000) + b"{")  # 50 KB announced, held open
        time.sleep(0.3)
        answer = raw_request(r.port, post_head(len(SUBMIT) + 20000))
        assert status_of(answer) == 503, answer[:200]
        assert wait_until(lambda: "body_memory_bytes" in r.log(), 3)
    finally:
        held.close()
    # once the first is gone, the memory is back
    assert wait_until(lambda: status_of(raw_request(r.port, post_head(len(SUBMIT) + 20000)
                                                     + SUBMIT + b" " * 20000)) == 200, 5)


def test_state_database_and_uploads_are_owner_only(router):
    db = Path(router.keys["state_path"])
    assert wait_until(lambda: db.exists(), 5)
    for name in (db, Path(str(db) + "-wal"), Path(str(db) + "-shm")):
        if name.exists():
            assert stat.S_IMODE(name.stat().st_mode) == 0o600, name
    resp = requests.post(router.url + "/submit_task",
                         data={"USED_AGENT_ID": "a1", "final_string_data": "{}"},
                         files={"file": ("f.txt", b"hello")}, timeout=5)
    # no backend: the answer waits for the commit (200) — or 503 if that fails
    assert resp.status_code == 200, resp.text
    uploads = list(Path(router.keys["upload_dir"]).glob("mr-*"))
    assert uploads
    for u in uploads:
        assert stat.S_IMODE(u.stat().st_mode) == 0o600, u


def test_one_connection_cannot_create_agents_without_end(router_factory):
    r = router_factory(max_agents_per_connection=2)
    backend = FakeBackend(r.ws_url, poll_interval=None).connect()
    try:
        flood = WSClient(r.ws_url)
        for i in range(50):
            flood.send(json.dumps(browser_packet("alive", "flood-%d" % i)))
        flood.send(json.dumps(browser_packet("heartbeat", "flood-0")))
        # the answers of the first two alives, then the heartbeat's
        for _ in range(3):
            flood.recv()
        statuses = backend.statuses()
        assert sorted(k for k in statuses if k.startswith("flood-")) == \
            ["flood-0", "flood-1"], statuses
        assert wait_until(lambda: "max_agents_per_connection" in r.log(), 3)
        flood.close()
    finally:
        backend.stop()


def test_static_symlinks_followed_upload_symlinks_not(router, tmp_path):
    outside = tmp_path / "task-build"
    outside.mkdir()
    (outside / "bundle.js").write_text("console.log('bundle');\n")
    # Mephisto's link_task_source: the bundle is a symlink out of static/
    (router.static_dir / "bundle.js").symlink_to(outside / "bundle.js")
    resp = router.get("/bundle.js")
    assert resp.status_code == 200 and "bundle" in resp.text
    # a link planted in upload_dir under a stored-looking name is not served
    planted = Path(router.keys["upload_dir"]) / ("mr-" + "ab" * 16)
    planted.symlink_to("/etc/passwd")
    resp = router.get("/download_file/" + planted.name)
    assert resp.status_code == 404
    assert "root:" not in resp.text
    for path in ("/../../etc/passwd", "/%2e%2e/%2e%2e/etc/passwd",
                 "/download_file/../../etc/passwd"):
        resp = router.get(path)
        assert "root:" not in resp.text, path


# ---- uploads are the router's own ----

def _upload(router, content, agent="a1"):
    with requests.Session() as s:
        s.trust_env = False
        resp = s.post(router.url + "/submit_task",
                      data={"USED_AGENT_ID": agent, "final_string_data": "{}"},
                      files={"f": ("mine.txt", content)}, timeout=5)
    assert resp.status_code == 200, resp.text


def _rows(db, sql):
    import sqlite3
    con = sqlite3.connect(str(db))
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


def test_download_serves_only_recorded_uploads(router):
    updir = Path(router.keys["upload_dir"])
    _upload(router, b"the real one")
    (stored,) = [p for p in updir.glob("mr-*")]
    assert router.get("/download_file/" + stored.name).content == b"the real one"
    # recorded in the state database, with its identity
    db = router.keys["state_path"]
    assert wait_until(lambda: _rows(db, "SELECT stored_name, original_name, field, "
                                        "agent_id, size FROM uploads") ==
                      [(stored.name, "mine.txt", "f", "a1", 12)], 5)
    # a file planted under a stored-looking name is not served
    planted = updir / ("mr-" + "cd" * 16)
    planted.write_bytes(b"planted")
    resp = router.get("/download_file/" + planted.name)
    assert resp.status_code == 404 and b"planted" not in resp.content
    # the recorded name with another file put in its place is not served
    other = updir / "other"
    other.write_bytes(b"swapped in")
    os.replace(other, stored)
    resp = router.get("/download_file/" + stored.name)
    assert resp.status_code == 404 and b"swapped" not in resp.content
    assert wait_until(lambda: "not the upload recorded" in router.log(), 3)


def test_large_download_streams(router):
    data = os.urandom(3 * 1024 * 1024 + 7)
    _upload(router, data)
    (stored,) = list(Path(router.keys["upload_dir"]).glob("mr-*"))
    resp = router.get("/download_file/" + stored.name)
    assert resp.status_code == 200 and resp.content == data


def test_upload_retention(router_factory):
    r = router_factory(upload_retention=1)
    _upload(r, b"short-lived")
    (stored,) = list(Path(r.keys["upload_dir"]).glob("mr-*"))
    assert wait_until(lambda: not stored.exists(), 5)
    assert r.get("/download_file/" + stored.name).status_code == 404
    assert wait_until(lambda: _rows(r.keys["state_path"],
                                    "SELECT count(*) FROM uploads") == [(0,)], 5)


def test_connections_per_address(router_factory):
    r = router_factory(workers=1, max_connections_per_address=3)

    def open_from(addr):
        s = socket.create_connection(("127.0.0.1", r.port), timeout=5,
                                     source_address=(addr, 0))
        s.sendall(b"GET /is_alive HTTP/1.1\r\nHost: x\r\n\r\n")
        return s

    def answered(s):
        s.settimeout(3)
        try:
            return b"200" in s.recv(4096)
        except OSError:
            return False
    held = [open_from("127.0.0.2") for _ in range(3)]
    try:
        assert all(answered(s) for s in held)
        extra = open_from("127.0.0.2")
        assert not answered(extra)  # closed without an answer
        extra.close()
        assert r.get("/is_alive").status_code == 200  # other addresses are served
        assert wait_until(lambda: "max_connections_per_address" in r.log(), 3)
        held.pop().close()

        def one_more():
            s = open_from("127.0.0.2")
            try:
                return answered(s)
            finally:
                s.close()
        assert wait_until(one_more, 5)
    finally:
        for s in held:
            s.close()


def test_oversized_head_is_431_and_long_url_414(router):
    big_header = b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"b" * 20000 + b"\r\n\r\n"
    assert status_of(raw_request(router.port, big_header)) == 431
    long_url = b"GET /" + b"a" * 20000 + b" HTTP/1.1\r\nHost: x\r\n\r\n"
    assert status_of(raw_request(router.port, long_url)) == 414
    # just under max_header_bytes (8K): served
    fits = b"GET /is_alive HTTP/1.1\r\nHost: x\r\nX-Big: " + b"b" * 7000 + b"\r\n\r\n"
    assert status_of(raw_request(router.port, fits)) == 200


def test_backend_queue_eviction_keeps_the_submission(router_factory):
    r = router_factory(max_backend_queue=5)
    agent = WSClient(r.ws_url)
    agent.send(json.dumps(browser_packet("alive", "a1")))
    agent.recv()
    with requests.Session() as s:
        s.trust_env = False
        resp = s.post(r.url + "/submit_task", timeout=5,
                      json={"USED_AGENT_ID": "a2", "final_data": {"answer": 42}})
    assert resp.status_code == 200, resp.text
    for i in range(30):  # junk while the backend is away
        agent.send(json.dumps(browser_packet("mephisto_bound_live_update", "a1", {"n": i})))
    agent.send(json.dumps(browser_packet("heartbeat", "a1")))
    agent.recv()  # all 30 were routed
    backend = FakeBackend(r.ws_url, poll_interval=None).connect()
    try:
        sub = backend.wait_for(lambda p: p.get("packet_type") == "submit_unit",
                               what="the submission")
        assert sub["data"] == {"answer": 42}
        time.sleep(0.3)
        updates = [p["data"]["n"] for p in backend.received(
            lambda p: p.get("packet_type") == "mephisto_bound_live_update")]
        assert updates == list(range(26, 30)), updates  # the newest, in order
        assert wait_until(lambda: "dropped" in r.log(), 3)
    finally:
        backend.stop()
        agent.close()


def test_one_address_cannot_create_agents_without_end(router_factory):
    r = router_factory(workers=1, max_agents_per_address=3)
    conns = []
    try:
        for i in range(3):
            c = WSClient(r.ws_url, local_addr=("127.0.0.2", 0))
            conns.append(c)
            c.send(json.dumps(browser_packet("alive", "addr-%d" % i)))
            assert json.loads(c.recv())["packet_type"] == "update_status"
        extra = WSClient(r.ws_url, local_addr=("127.0.0.2", 0))
        conns.append(extra)
        extra.send(json.dumps(browser_packet("alive", "addr-3")))
        extra.send(json.dumps(browser_packet("heartbeat", "addr-3")))
        answer = json.loads(extra.recv())
        assert answer["packet_type"] == "heartbeat"  # no update_status: not created
        assert "status" not in answer["data"]  # an unknown agent
        other = WSClient(r.ws_url)  # another address is not affected
        conns.append(other)
        other.send(json.dumps(browser_packet("alive", "elsewhere")))
        assert json.loads(other.recv())["packet_type"] == "update_status"
        assert wait_until(lambda: "max_agents_per_address" in r.log(), 3)
    finally:
        for c in conns:
            c.close()


def test_check_config_refuses_what_start_refuses(cli, tmp_path):
    import resource

    base = "state_path = %s\n" % (tmp_path / "s.db")
    cases = [
        ("ipc_buffer_bytes = 64K\nmax_message_bytes = 1M\n", "ipc_buffer_bytes"),
        ("body_memory_bytes = 64K\nbackend_max_frame_bytes = 1M\n", "body_memory_bytes"),
        ("upload_dir = /proc/version\n", "upload_dir"),
        ("upload_dir = /nonexistent-parent/uploads\n", "upload_dir"),
        ("state_path = /nonexistent-dir/s.db\n", "state_path"),
    ]
    for text, key in cases:
        conf = tmp_path / "c.conf"
        conf.write_text((base if "state_path" not in text else "") + text)
        res = cli(["--check-config", "--config", str(conf)])
        assert res.returncode == 2 and key in res.stderr, (text, res)
        start = cli(["--config", str(conf)], timeout=10)
        assert start.returncode == 2 and key in start.stderr, (text, start)
    # the open-file limit: the check refuses, as each worker would
    conf = tmp_path / "fd.conf"
    conf.write_text(base + "max_connections = 5000\n")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    res = subprocess.run([require_binary(), "--check-config", "--config", str(conf)],
                         capture_output=True, text=True, timeout=10,
                         preexec_fn=lambda: resource.setrlimit(
                             resource.RLIMIT_NOFILE, (512, 512)))
    assert res.returncode == 2 and "limit is 512" in res.stderr, res
    # a missing upload_dir whose parent is writable: the start makes it, 0700
    conf.write_text(base + "upload_dir = %s\n" % (tmp_path / "new-uploads"))
    assert cli(["--check-config", "--config", str(conf)]).returncode == 0


def test_missing_upload_dir_is_made_owner_only(router_factory, tmp_path):
    updir = tmp_path / "made-by-the-router"
    r = router_factory(upload_dir=str(updir) + "/")
    assert updir.is_dir()
    assert stat.S_IMODE(updir.stat().st_mode) == 0o700
    _upload(r, b"lands here")
    assert len(list(updir.glob("mr-*"))) == 1


def test_trusted_proxy_without_a_readable_header_is_not_the_backend(router_factory):
    # the shipped proxy setup keeps loopback in backend_allow
    r = router_factory(trusted_proxies="127.0.0.1", max_header_bytes="16K")
    for headers in ({}, {"X-Forwarded-For": "a" * 9000 + ", 203.0.113.9"},
                    {"X-Forwarded-For": "b" * 3000 + ", 203.0.113.9"}):
        c = WSClient(r.ws_url, extra_headers=headers)
        c.send(ALIVE_BACKEND)
        assert closed_code(c) == 1008, headers.keys()
    assert "Mephisto channel" not in r.log()


def test_connections_per_address_spares_trusted_proxies(router_factory):
    r = router_factory(workers=1, max_connections_per_address=2,
                       trusted_proxies="127.0.0.2")
    held = []
    try:
        for _ in range(5):
            s = socket.create_connection(("127.0.0.1", r.port), timeout=5,
                                         source_address=("127.0.0.2", 0))
            held.append(s)
            s.sendall(b"GET /is_alive HTTP/1.1\r\nHost: x\r\n\r\n")
            s.settimeout(3)
            assert b"200" in s.recv(4096)
    finally:
        for s in held:
            s.close()


def test_pipelined_post_does_not_spin_a_worker(router_factory):
    """GET then a POST with a body in one send: lws 4.1.6 looped forever in
    lws_http_action() on it (found by tests/fuzz/fuzz_http_head)."""
    r = router_factory(workers=1)
    (pid,) = r.worker_pids()
    before = cpu_seconds(pid)
    pipelined = (b"GET /is_alive HTTP/1.1\r\nHost: x\r\n\r\n"
                 b"POST /log_error HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 b"Content-Length: 2\r\n\r\n{}")
    for _ in range(5):
        raw_request(r.port, pipelined, wait=1)
    time.sleep(1)
    assert cpu_seconds(pid) - before < 0.5, "the worker spins"
    assert r.get("/is_alive").status_code == 200


def test_unknown_upgrade_on_keep_alive(router_factory):
    """A second request with an unknown Upgrade value (lws freed its header
    table and used it: found by the fuzzer): an answer or a close, and the
    worker lives (the guard in every test checks it)."""
    r = router_factory(workers=1)
    two = (b"GET /is_alive HTTP/1.1\r\nHost: x\r\n\r\n"
           b"GET /is_alive HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: bogus\r\n\r\n")
    for _ in range(5):
        raw_request(r.port, two, wait=1)
    assert r.get("/is_alive").status_code == 200
