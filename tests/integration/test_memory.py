"""A worker's memory across many requests on keep-alive connections.

lws frees a connection's session (our protocol's user data, struct
session) and makes a new one each time a keep-alive transaction completes
and each time the next request's head arrives. A request (struct
http_req, ~6.7 KB) still hanging off the session at that point is lost:
that is how every static file served with access_log = 1 leaked one (the
request was made for the access log and not freed before
lws_http_transaction_completed()).

Two checks, each bounded in requests and time, on 127.0.0.1 only:
- any build: the worker's anonymous memory (RssAnon) must not grow with
  thousands of keep-alive requests (a leak of 6.7 KB a request is tens of
  MB here, noise a few MB at most); under the ASan build its quarantine
  is turned off, or freed memory would look like growth;
- the ASan build: after the same kinds of requests (and a download, a
  client closing mid-file, ...), a clean stop must let LeakSanitizer run at
  the worker's exit and find nothing.
"""

import contextlib
import http.client
import json
import os
import re
import socket
import time

import pytest
import requests

from conftest import HTTP_TIMEOUT, router_binary, wait_until

TASK_CONFIG = b'{"mephisto_task_version": "2.2.4"}\n'

# GET/HEAD paths on a static_dir made by conftest.static_tree (plus
# task_config.json written here), by how they are answered
STATIC_GETS = ["/", "/task_config.json", "/index.html", "/style.css", "/app.js",
               "/sub/page.html", "/task_index"]

# RssAnon growth allowed over the measured batch: the leak this guards
# against is 6.7 KB per static request, tens of MB for the batch below
GROWTH_LIMIT_KB = 8 * 1024
BATCH_CONNECTIONS = 10
BATCH_PER_CONNECTION = 600  # 6,000 requests, ~5,000 of them static files
BATCH_SECONDS = 120.0


def is_asan_binary(path):
    """True when the router binary is built with AddressSanitizer."""
    try:
        with open(path, "rb") as f:
            return b"__asan_init" in f.read()
    except OSError:
        return False


def asan_env(**options):
    """ASAN_OPTIONS for the router: the caller's, then ours (later wins)."""
    mine = ":".join("%s=%s" % kv for kv in options.items())
    old = os.environ.get("ASAN_OPTIONS", "")
    return {"ASAN_OPTIONS": (old + ":" + mine) if old else mine}


def rss_anon_kb(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("RssAnon:"):
                return int(line.split()[1])
    raise AssertionError("no RssAnon in /proc/%d/status" % pid)


def request(conn, method, path, body=None, headers=None):
    conn.request(method, path, body=body, headers=headers or {})
    resp = conn.getresponse()
    data = resp.read()
    return resp.status, data


def keepalive_mix(router, n, deadline):
    """n requests on one keep-alive connection, mostly static files (GET,
    some HEAD), with a 404, /is_alive and a POST among them; every answer
    is checked. Returns the number of static GETs and HEADs."""
    conn = http.client.HTTPConnection("127.0.0.1", router.port, timeout=HTTP_TIMEOUT)
    statics = 0
    try:
        for i in range(n):
            assert time.monotonic() < deadline, (
                "requests too slow: not done within %.0f s" % BATCH_SECONDS)
            if i % 50 == 10:
                status, _ = request(conn, "GET", "/no-such-file.html")
                assert status == 404
            elif i % 50 == 20:
                status, _ = request(conn, "GET", "/is_alive")
                assert status == 200
            elif i % 50 == 30:
                status, _ = request(conn, "POST", "/log_error",
                                    json.dumps({"USED_AGENT_ID": "mem-test",
                                                "error_data": {"n": i}}),
                                    {"Content-Type": "application/json"})
                assert status == 200
            elif i % 10 == 5:
                status, data = request(conn, "HEAD", "/index.html")
                assert status == 200 and data == b""
                statics += 1
            else:
                path = STATIC_GETS[i % len(STATIC_GETS)]
                status, data = request(conn, "GET", path)
                assert status == 200, (path, status)
                if path == "/task_config.json":
                    assert data == TASK_CONFIG
                statics += 1
    finally:
        conn.close()
    return statics


def start_router(router_factory, **options):
    env = asan_env(**options) if is_asan_binary(router_binary()) else None
    r = router_factory(workers=1, access_log=1, shutdown_timeout=10, env=env)
    (r.static_dir / "task_config.json").write_bytes(TASK_CONFIG)
    return r


def test_keepalive_requests_do_not_grow_worker_memory(router_factory):
    # without the quarantine, ASan reuses freed memory as malloc does
    r = start_router(router_factory, quarantine_size_mb=0,
                     thread_local_quarantine_size_kb=0)
    pid = r.workers_by_slot()[1]
    deadline = time.monotonic() + BATCH_SECONDS
    # warm-up: lws's and libc's buffers reach their steady size
    for _ in range(2):
        keepalive_mix(r, 200, deadline)
    before = rss_anon_kb(pid)
    statics = 0
    for _ in range(BATCH_CONNECTIONS):
        statics += keepalive_mix(r, BATCH_PER_CONNECTION, deadline)
    after = rss_anon_kb(pid)
    assert r.workers_by_slot().get(1) == pid, "the worker was replaced"
    growth = after - before
    assert growth < GROWTH_LIMIT_KB, (
        "the worker's RssAnon grew by %d KB (%d -> %d KB) over %d keep-alive "
        "requests, %d of them static files: %.1f KB each; a request struct "
        "is lost per static file?" % (growth, before, after,
                                      BATCH_CONNECTIONS * BATCH_PER_CONNECTION,
                                      statics, growth / max(statics, 1)))
    r.check_workers(settle=0)


def upload_and_find(r):
    """Submit a file (multipart submit_task): the name it is stored under."""
    with requests.Session() as s:
        s.trust_env = False
        resp = s.post(r.url + "/submit_task",
                      data={"USED_AGENT_ID": "mem-test", "final_string_data": "{}",
                            "client_timestamp": repr(time.time())},
                      files=[("f", ("a.txt", b"download-marker\n" * 2000,
                                    "text/plain"))],
                      timeout=HTTP_TIMEOUT)
    assert resp.status_code == 200, (resp.status_code, resp.text[:200])
    up = r.dir / "uploads"
    names = wait_until(lambda: [n for n in os.listdir(up) if n.startswith("mr-")], 3.0)
    assert names, "the upload is not in %s" % up
    return names[0]


def close_mid_file(r, path):
    """Ask for a large file and hang up after its first bytes."""
    with contextlib.closing(socket.create_connection(
            ("127.0.0.1", r.port), timeout=HTTP_TIMEOUT)) as sk:
        sk.sendall(b"GET /index.html HTTP/1.1\r\nHost: t\r\n\r\n"
                   b"GET " + path.encode() + b" HTTP/1.1\r\nHost: t\r\n\r\n")
        assert sk.recv(4096)


def test_no_leak_reported_at_worker_exit(router_factory):
    if not is_asan_binary(router_binary()):
        pytest.skip("LeakSanitizer needs the ASan build (make test-asan); "
                    "test_keepalive_requests_do_not_grow_worker_memory covers "
                    "this build")
    # detect_leaks explicitly: a caller's ASAN_OPTIONS may have turned it off
    r = start_router(router_factory, detect_leaks=1)
    (r.static_dir / "big.bin").write_bytes(os.urandom(4 << 20))
    deadline = time.monotonic() + BATCH_SECONDS
    for _ in range(3):
        keepalive_mix(r, 100, deadline)
    # a download among static files, on one keep-alive connection
    stored = upload_and_find(r)
    conn = http.client.HTTPConnection("127.0.0.1", r.port, timeout=HTTP_TIMEOUT)
    try:
        for _ in range(3):
            assert request(conn, "GET", "/download_file/" + stored)[0] == 200
            assert request(conn, "GET", "/")[0] == 200
            assert request(conn, "HEAD", "/download_file/" + stored)[0] == 200
            assert request(conn, "GET", "/download_file/mr-" + "0" * 32)[0] == 404
            assert request(conn, "HEAD", "/no-such-file.html")[0] == 404
            assert request(conn, "GET", "/index.html")[0] == 200
    finally:
        conn.close()
    for _ in range(3):
        close_mid_file(r, "/big.bin")
    # one keep-alive connection still open at the stop
    idle = http.client.HTTPConnection("127.0.0.1", r.port, timeout=HTTP_TIMEOUT)
    assert request(idle, "GET", "/")[0] == 200
    try:
        rc = r.stop(timeout=30)
    finally:
        idle.close()
    log = r.log()
    assert "LeakSanitizer" not in log, (
        "LeakSanitizer at exit:\n%s" % log[log.find("LeakSanitizer") - 200:][:3000])
    # the worker ran its exit (and so the leak check, which makes its status
    # nonzero when it finds a leak or cannot run): not killed at the drain
    assert rc == 0, "the router stopped with %r\n%s" % (rc, r.log_tail())
    assert re.search(r"supervisor: worker 1 exited with status 0$", log, re.M), (
        r.log_tail())
