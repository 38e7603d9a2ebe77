"""Integration tests of the Mephisto router protocol (issue 3), against
../../../shared/PROTOCOL.md: every packet type, every endpoint, the points of
"Where we do better", liveness, queues, uploads and bad input.

A fake Mephisto backend and fake mephisto-task browsers (mephisto_fakes.py)
talk to the real binary over 127.0.0.1. The routers run with 2 workers and
several tests put the backend and the browser on different workers (found
with the X-Router-Worker header of the WebSocket upgrade answer)."""

import concurrent.futures
import http.client
import json
import os
import signal
import socket
import time
import uuid
from pathlib import Path

import pytest

from conftest import HTTP_TIMEOUT, is_running, miss_pause, wait_until
from mephisto_fakes import (FINAL_STATUSES, MEPHISTO, Peers,
                            protocol_checked,
                            backend_packet, browser_packet, is_number,
                            is_seconds, of_type, post_json,
                            post_raw, short)

# every router of this file: debug log (for failure reports), short request
# timeout so a broken answer path costs little
PROTO_KEYS = {"log_level": "debug", "request_timeout": 3}

FILE_RECORD_KEYS = {"fieldname", "originalname", "encoding", "mimetype",
                    "destination", "filename", "path", "size"}

PLACEMENTS = [pytest.param((1, 1), id="same-worker"),
              pytest.param((1, 2), id="cross-worker")]


# ==========================================================================
# fixture and helpers

class Env(Peers):
    """Routers, fake backends and fake browsers of one test."""

    def __init__(self, factory, tmp_path):
        self.factory = factory
        self.tmp_path = tmp_path
        self.r = None
        super().__init__()

    def router(self, start=True, **keys):
        k = dict(PROTO_KEYS)
        k.update(keys)
        r = self.factory(start=start, **k)
        if self.r is None:
            self.r = r
        return r

    def backend(self, router=None, connect=True, **kw):
        return self.add_backend(router or self.r, connect, **kw)

    def browser(self, router=None, **kw):
        return self.add_browser(router or self.r, **kw)


@pytest.fixture
def env(router_factory, tmp_path):
    with protocol_checked(Env(router_factory, tmp_path)) as e:
        yield e


def media_type(resp):
    return resp.headers.get("Content-Type", "").split(";")[0].strip().lower()


def no_cache(resp):
    cc = [t.strip().lower() for t in resp.headers.get("Cache-Control", "").split(",")]
    return "no-cache" in cc or "no-store" in cc


def json_ok(resp, expected=None):
    assert resp.status_code == 200, "HTTP %d: %s" % (resp.status_code, resp.text[:300])
    assert media_type(resp) == "application/json", resp.headers.get("Content-Type")
    body = resp.json()
    if expected is not None:
        assert body == expected, body
    return body


def json_error(resp, status):
    assert resp.status_code == status, "expected HTTP %d, got %d: %s" % (
        status, resp.status_code, resp.text[:300])
    assert media_type(resp) == "application/json", (
        "error answer %d is %r, not JSON" % (status, resp.headers.get("Content-Type")))
    body = resp.json()
    assert isinstance(body, dict) and "error" in body, (
        "error answer %d has no \"error\" key: %r" % (status, body))
    return body


def is_uuid4(s):
    try:
        u = uuid.UUID(s)
    except (ValueError, TypeError, AttributeError):
        return False
    return u.version == 4 and str(u) == s.lower()


def upload_listing(r):
    d = r.dir / "uploads"
    return sorted(p.relative_to(d).as_posix() for p in d.rglob("*"))


def without_files(data):
    """data minus the upload keys (when empty, a JSON submit may carry them)."""
    out = dict(data)
    for k in ("files", "filesByFields"):
        if k in out and not out[k]:
            del out[k]
    return out


def check_file_records(r, records, sent):
    """records (data.files) describe sent [(field, name, bytes, mime)]."""
    upload_dir = r.dir / "uploads"
    assert isinstance(records, list) and len(records) == len(sent), records
    names = set()
    for field, name, content, mime in sent:
        recs = [x for x in records if x.get("originalname") == name]
        assert len(recs) == 1, "no single record for %r in %s" % (name, records)
        rec = recs[0]
        assert set(rec) == FILE_RECORD_KEYS, "record keys %s" % sorted(rec)
        assert rec["fieldname"] == field
        assert rec["mimetype"] == mime, rec
        assert rec["size"] == len(content) and is_number(rec["size"]), rec
        assert isinstance(rec["encoding"], str), rec
        fn = rec["filename"]
        assert isinstance(fn, str) and fn and "/" not in fn and "\\" not in fn, rec
        assert fn not in (".", "..") and fn != name, (
            "stored name %r comes from the client" % fn)
        assert os.path.realpath(rec["destination"]) == os.path.realpath(upload_dir), rec
        assert os.path.realpath(rec["path"]) == os.path.realpath(upload_dir / fn), rec
        assert (upload_dir / fn).read_bytes() == content, "stored bytes differ for %s" % fn
        names.add(fn)
    assert len(names) == len(sent), "stored names not unique: %s" % records


def check_files_by_fields(data):
    fbf = data.get("filesByFields")
    assert isinstance(fbf, dict), "filesByFields missing: %s" % short(data)
    expect = {}
    for rec in data["files"]:
        expect.setdefault(rec["fieldname"], []).append(
            {k: v for k, v in rec.items() if k != "fieldname"})
    assert set(fbf) == set(expect), fbf
    for field, recs in expect.items():
        got = fbf[field]
        key = lambda x: x["originalname"]  # noqa: E731
        assert sorted(got, key=key) == sorted(recs, key=key), (field, got, recs)


def raw_request(port, data, timeout=5.0, send_timeout=None):
    """Send raw bytes (tolerating a peer that stops reading), read the answer
    until close. Returns (status or None, headers dict, body bytes, note)."""
    chunks = []
    note = ""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        try:
            s.sendall(data)
        except (BrokenPipeError, ConnectionResetError, socket.timeout) as e:
            note = "send: %r" % e
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                b = s.recv(65536)
            except socket.timeout:
                note += " recv timeout"
                break
            except ConnectionResetError as e:
                note += " recv: %r" % e
                break
            if not b:
                break
            chunks.append(b)
            if _complete_response(b"".join(chunks)):
                break
    raw = b"".join(chunks)
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = None
    if lines and lines[0].startswith(b"HTTP/"):
        parts = lines[0].split()
        if len(parts) >= 2 and parts[1].isdigit():
            status = int(parts[1])
    headers = {}
    for line in lines[1:]:
        k, _, v = line.partition(b":")
        headers[k.strip().lower().decode(errors="replace")] = v.strip().decode(errors="replace")
    if headers.get("transfer-encoding", "").lower() == "chunked":
        body = _dechunk(body)
    return status, headers, body, note


def _complete_response(raw):
    head, sep, body = raw.partition(b"\r\n\r\n")
    if not sep:
        return False
    for line in head.split(b"\r\n")[1:]:
        k, _, v = line.partition(b":")
        if k.strip().lower() == b"content-length" and v.strip().isdigit():
            return len(body) >= int(v.strip())
        if k.strip().lower() == b"transfer-encoding" and b"chunked" in v.lower():
            return body.endswith(b"0\r\n\r\n")
    return False


def _dechunk(body):
    out = b""
    for _ in range(100000):
        line, _, rest = body.partition(b"\r\n")
        try:
            n = int(line.split(b";")[0], 16)
        except ValueError:
            return out
        if n == 0:
            return out
        out += rest[:n]
        body = rest[n + 2:]
    return out


def raw_get(port, target):
    return raw_request(port, b"GET " + target.encode() + b" HTTP/1.1\r\n"
                       b"Host: 127.0.0.1\r\nConnection: close\r\n\r\n")


def raw_post(port, path, body, content_type="application/json", extra=b""):
    req = (b"POST " + path.encode() + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n"
           b"Content-Type: " + content_type.encode() + b"\r\n"
           b"Content-Length: " + str(len(body)).encode() + b"\r\n" + extra +
           b"Connection: close\r\n\r\n") + body
    return raw_request(port, req)


def multipart_body(fields, files, boundary="----protoTestBoundary7MA4YWxkTrZu0gW"):
    b = boundary.encode()
    out = b""
    for k, v in fields.items():
        out += (b"--" + b + b'\r\nContent-Disposition: form-data; name="' + k.encode()
                + b'"\r\n\r\n' + v.encode() + b"\r\n")
    for field, name, content, mime in files:
        out += (b"--" + b + b'\r\nContent-Disposition: form-data; name="' + field.encode()
                + b'"; filename="' + name.encode() + b'"\r\nContent-Type: ' + mime.encode()
                + b"\r\n\r\n" + content + b"\r\n")
    out += b"--" + b + b"--\r\n"
    return out, "multipart/form-data; boundary=" + boundary


def body_error_key(body):
    try:
        obj = json.loads(body.decode("utf-8"))
    except (ValueError, UnicodeDecodeError):
        return False
    return isinstance(obj, dict) and "error" in obj


def live_update_numbers(packets, key="n"):
    return [p["data"].get(key) for p in packets]


def write_task_config(r, version=None):
    cfg = {"task_title": "protocol test", "block_mode": "static",
           "frontend_task_opts": {"marker": "task-config-marker"}}
    if version is not None:
        cfg["mephisto_task_version"] = version
    raw = json.dumps(cfg).encode()
    (r.static_dir / "task_config.json").write_bytes(raw)
    return raw


def is_version_warning(p):
    return p.get("packet_type") == "log_error" and p.get("subject_id") == MEPHISTO


def timed(fn, *args, **kw):
    t0 = time.monotonic()
    resp = fn(*args, **kw)
    return resp, time.monotonic() - t0


class HTTPOnWorker:
    """A keep-alive HTTP connection held by a chosen worker (new
    connections until X-Router-Worker says so, bounded)."""

    def __init__(self, port, worker, max_attempts=300):
        self.worker = worker
        self.conn = None
        deadline = time.monotonic() + 15
        for attempt in range(max_attempts):
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=HTTP_TIMEOUT)
            conn.request("GET", "/is_alive")
            resp = conn.getresponse()
            resp.read()
            if resp.getheader("X-Router-Worker") == str(worker):
                self.conn = conn
                return
            conn.close()
            if time.monotonic() > deadline:
                break
            miss_pause(attempt)
        raise AssertionError("no HTTP connection on worker %d" % worker)

    def request(self, method, path, body=None, content_type="application/json"):
        """(status, parsed JSON or raw bytes) on this connection."""
        headers = {}
        if body is not None:
            if not isinstance(body, bytes):
                body = json.dumps(body).encode()
            headers["Content-Type"] = content_type
        self.conn.request(method, path, body=body, headers=headers)
        resp = self.conn.getresponse()
        data = resp.read()
        assert resp.getheader("X-Router-Worker") == str(self.worker), (
            "keep-alive connection answered by worker %s"
            % resp.getheader("X-Router-Worker"))
        if resp.getheader("Content-Type", "").startswith("application/json"):
            return resp.status, json.loads(data)
        return resp.status, data

    def close(self):
        self.conn.close()


# ==========================================================================
# 1. plain endpoints

def test_index_routes_serve_index_html(env):
    r = env.router()
    for path in ("/task_index", "/welcome", "/",
                 "/task_index?workerId=w1&assignmentId=a1&hitId=h1"):
        resp = r.get(path)
        assert resp.status_code == 200, "%s -> %d" % (path, resp.status_code)
        assert resp.content == r.static_files["index.html"], path
        assert media_type(resp) == "text/html", (path, resp.headers.get("Content-Type"))
        assert no_cache(resp), (path, resp.headers.get("Cache-Control"))
    resp = r.get("/style.css?workerId=w1")
    assert resp.status_code == 200 and resp.content == r.static_files["style.css"]


def test_is_alive_and_get_timestamp_ignore_provider_params(env):
    r = env.router()
    json_ok(r.get("/is_alive?workerId=w1&assignmentId=a1"), {"status": "Alive!"})
    t0 = time.time() * 1000
    body = json_ok(r.get("/get_timestamp?workerId=w1"))
    t1 = time.time() * 1000
    ts = body.get("timestamp")
    assert is_number(ts) and t0 - 2000 <= ts <= t1 + 2000, body


def test_unknown_post_path_is_404_json(env):
    r = env.router()
    be = env.backend(poll_interval=None)
    for path in ("/no_such_endpoint", "/submit-metadata", "/request_agent/extra"):
        json_error(post_json(r.url, path, {"USED_AGENT_ID": "a", "metadata": {}}), 404)
    time.sleep(0.5)
    assert be.received() == [], [short(p) for p in be.received()]
    assert be.ping_ok()


# ==========================================================================
# 2. registration: POST /request_agent <-> register_agent / agent_details

@pytest.mark.parametrize("backend_worker,http_worker", [(1, 1), (1, 2), (2, 1)],
                         ids=["same-worker", "backend1-http2", "backend2-http1"])
def test_request_agent_round_trip(env, backend_worker, http_worker):
    r = env.router()
    be = env.backend(want_worker=backend_worker)
    conn = HTTPOnWorker(r.port, http_worker)  # keep-alive, like a browser
    rids = []
    for i in range(6):
        pd = {"worker_name": "w%d" % i, "assignment_id": "as-%d" % i,
              "nested": {"list": [1, 2, i], "unicode": "h\u00e9\u2713"}}
        t0 = time.time()
        status, body = conn.request("POST", "/request_agent?workerId=w%d&assignmentId=a" % i,
                                    {"provider_data": pd, "client_timestamp": time.time()})
        t1 = time.time()
        assert status == 200 and isinstance(body, dict), (status, body)
        reg = be.wait_for(lambda p: p.get("packet_type") == "register_agent" and
                          p["data"].get("provider_data") == pd, what="register_agent")
        rid = reg["subject_id"]
        assert is_uuid4(rid), "request id %r is not a uuid4" % rid
        assert reg["data"] == {"provider_data": pd, "request_id": rid}, short(reg)
        assert is_seconds(reg.get("client_timestamp")) and \
            t0 - 1 <= reg["client_timestamp"] <= t1 + 1, short(reg)
        assert is_seconds(reg.get("router_incoming_timestamp")) and \
            t0 - 1 <= reg["router_incoming_timestamp"] <= t1 + 1, short(reg)
        sent = be.sent_details[rid]
        assert body.get("packet_type") == "agent_details", body
        assert body.get("subject_id") == rid, body
        assert body.get("data") == sent["data"], (body, sent)
        rids.append(rid)
    assert len(set(rids)) == len(rids), rids
    time.sleep(1.0)  # a second copy would arrive within this
    regs = be.received(of_type("register_agent"))
    assert sorted(p["subject_id"] for p in regs) == sorted(rids), (
        "register_agent not exactly once per request: %s"
        % [p["subject_id"] for p in regs])


def test_agent_details_matched_by_subject_id(env):
    """agent_details without data.request_id: subject_id is the request id."""
    env.router()
    be = env.backend(details_request_id=False)
    b = env.browser(connect=False)
    body = json_ok(b.request_agent())
    reg = be.wait_for(of_type("register_agent"))
    assert body["subject_id"] == reg["subject_id"]
    assert "request_id" not in body["data"] and body["data"]["agent_id"], body


def test_agent_details_unknown_request_id_dropped(env):
    env.router()
    be = env.backend()
    for rid in (str(uuid.uuid4()), "not-a-uuid", ""):
        be.send(backend_packet("agent_details", rid, {"request_id": rid, "agent_id": "x"}))
    be.send(backend_packet("agent_details", "whatever", {"agent_id": "y"}))
    assert be.ping_ok() and be.is_open
    b = env.browser(connect=False)
    body = json_ok(b.request_agent())
    assert body["packet_type"] == "agent_details"
    assert be.statuses() is not None


def test_concurrent_requests_get_their_own_answer(env):
    env.router()
    be = env.backend(details_delay=0.3)
    b = env.browser(connect=False)
    n = 10
    with concurrent.futures.ThreadPoolExecutor(max_workers=n) as pool:
        futs = {i: pool.submit(b.request_agent, {"worker_name": "cw%d" % i})
                for i in range(n)}
        answers = {i: f.result(15) for i, f in futs.items()}
    by_worker = {}
    for p in be.received(of_type("register_agent")):
        by_worker[p["data"]["provider_data"]["worker_name"]] = p["subject_id"]
    for i, resp in answers.items():
        body = json_ok(resp)
        assert body["subject_id"] == by_worker["cw%d" % i], (
            "request %d got the answer of another request" % i)
        assert body["data"] == be.sent_details[body["subject_id"]]["data"]


# ==========================================================================
# 3. onboarding

def test_submit_onboarding(env):
    env.router()
    be = env.backend(poll_interval=None)
    b = env.browser()
    b.alive()
    assert b.agent_id in be.statuses()
    ob = {"answers": [1, 2, 3], "passed": True}
    t0 = time.time()
    resp = b.submit_onboarding(ob, extra_field="kept")
    body = json_ok(resp)
    pkt = be.wait_for(of_type("submit_onboarding", b.agent_id), what="submit_onboarding")
    rid = pkt["data"].get("request_id")
    assert is_uuid4(rid), short(pkt)
    assert pkt["data"] == {"onboarding_data": ob, "extra_field": "kept",
                           "request_id": rid}, short(pkt)
    assert is_seconds(pkt.get("client_timestamp")) and pkt["client_timestamp"] >= t0 - 1
    assert is_seconds(pkt.get("router_incoming_timestamp"))
    assert body["packet_type"] == "agent_details"
    assert body["data"] == be.sent_details[rid]["data"], body
    # the agent's local state is forgotten
    assert b.agent_id not in be.statuses(), "agent state kept after onboarding"

    # onboarding_data defaults to {}
    b2 = env.browser(connect=False)
    json_ok(b2.submit_onboarding())
    pkt2 = be.wait_for(of_type("submit_onboarding", b2.agent_id))
    assert pkt2["data"]["onboarding_data"] == {}, short(pkt2)
    assert set(pkt2["data"]) == {"onboarding_data", "request_id"}, short(pkt2)
    time.sleep(1.0)
    assert be.count(of_type("submit_onboarding")) == 2, "not exactly once"


# ==========================================================================
# 4. submit_task, submit_metadata, log_error

def test_submit_task_json(env):
    env.router()
    be = env.backend(poll_interval=None)
    b = env.browser()
    b.alive()
    be.set_status(b.agent_id, "in task")
    b.recv_until(lambda p: p["packet_type"] == "update_status" and
                 p["data"].get("status") == "in task")
    fd = {"answer": 42, "text": "h\u00e9llo \u2713", "nested": {"a": [1, None, True]}}
    t0 = time.time()
    json_ok(b.submit_task(fd), {"status": "Submitted!"})
    pkt = be.wait_for(of_type("submit_unit", b.agent_id), what="submit_unit")
    assert without_files(pkt["data"]) == fd, short(pkt)
    assert is_seconds(pkt.get("client_timestamp")) and pkt["client_timestamp"] >= t0 - 1
    assert is_seconds(pkt.get("router_incoming_timestamp"))
    assert b.agent_id not in be.statuses(), "agent state kept after submit_task"
    time.sleep(1.0)
    assert be.count(of_type("submit_unit")) == 1, "submit_unit not exactly once"


def test_submit_task_multipart_with_files(env):
    r = env.router()
    be = env.backend(poll_interval=None)
    b = env.browser(connect=False)
    files = [("photo", "cat.png", b"\x89PNG\r\n\x1a\n" + os.urandom(3000), "image/png"),
             ("docs", "a.txt", b"alpha\n", "text/plain"),
             ("docs", "b.bin", bytes(range(256)) * 40, "application/octet-stream")]
    fsd = {"answer": "yes", "rating": 5}
    ct = 1700000000.25
    json_ok(b.submit_task_multipart(json.dumps(fsd), files, client_timestamp=ct),
            {"status": "Submitted!"})
    pkt = be.wait_for(of_type("submit_unit", b.agent_id), what="submit_unit")
    data = pkt["data"]
    assert {k: v for k, v in data.items() if k not in ("files", "filesByFields")} == fsd
    assert is_number(pkt.get("client_timestamp")) and \
        abs(pkt["client_timestamp"] - ct) < 1e-3, (
            "client_timestamp %r, sent %r as a form field" % (pkt.get("client_timestamp"), ct))
    check_file_records(r, data["files"], files)
    check_files_by_fields(data)
    # the backend may fetch from any worker, whichever stored the file
    for w in (1, 2):
        conn = HTTPOnWorker(r.port, w)
        for rec, (_, _, content, _) in zip(
                sorted(data["files"], key=lambda x: x["originalname"]),
                sorted(files, key=lambda f: f[1])):
            status, got = conn.request("GET", "/download_file/" + rec["filename"])
            assert status == 200 and got == content, (
                "download of %s from worker %d: %d" % (rec["filename"], w, status))
        conn.close()
    time.sleep(0.7)
    assert be.count(of_type("submit_unit")) == 1


def test_upload_mimetype_follows_the_file_name(env):
    """A file record's mimetype comes from the original file name's
    extension (README "Uploads": lws_spa does not expose a part's own
    Content-Type), application/octet-stream when the extension is unknown."""
    env.router()
    be = env.backend(poll_interval=None)
    b = env.browser(connect=False)
    files = [("img", "photo.jpg", b"\xff\xd8\xff", "application/octet-stream"),
             ("notes", "notes.txt", b"hello", "application/octet-stream"),
             ("blob", "data.qzx9", b"\x00\x01", "text/plain")]
    json_ok(b.submit_task_multipart(json.dumps({"a": 1}), files))
    recs = be.wait_for(of_type("submit_unit"))["data"]["files"]
    got = {x["originalname"]: x["mimetype"] for x in recs}
    assert got == {"photo.jpg": "image/jpeg", "notes.txt": "text/plain",
                   "data.qzx9": "application/octet-stream"}, got


def test_submit_task_bad_final_string_data_leaves_nothing(env):
    r = env.router()
    be = env.backend(poll_interval=None)
    b = env.browser(connect=False)
    before = upload_listing(r)
    # the file part comes after final_string_data (mephisto-task's order) or
    # before it (then it is already stored when the JSON turns out bad)
    for bad, file_first in (("{not json", False), ("[unterminated", True),
                            ('"a string"', False), ("null", True)):
        fields = {"USED_AGENT_ID": b.agent_id, "final_string_data": bad,
                  "client_timestamp": "1700000000.5"}
        files = [("f", "x.bin", os.urandom(100000), "application/octet-stream")]
        body, ctype = multipart_body({} if file_first else fields, files)
        if file_first:
            extra, _ = multipart_body(fields, [])
            closing = b"--" + ctype.split("boundary=")[1].encode() + b"--\r\n"
            assert body.endswith(closing)
            body = body[:-len(closing)] + extra
        json_error(post_raw(r.url, "/submit_task", body, content_type=ctype), 400)
        # deleted, at the latest shortly after the answer
        assert wait_until(lambda: upload_listing(r) == before, 2.0), (
            "a refused upload (final_string_data %r) left files: %s"
            % (bad, upload_listing(r)))
    json_ok(b.submit_task_multipart(json.dumps({"ok": 1})), {"status": "Submitted!"})
    pkt = be.wait_for(of_type("submit_unit"))
    assert pkt["data"].get("ok") == 1
    time.sleep(0.5)
    assert be.count(of_type("submit_unit")) == 1, [short(p) for p in be.received()]
    assert upload_listing(r) == before


def test_submit_task_empty_final_string_data_is_400(env):
    """An empty final_string_data is not JSON either (Node's reference
    crashes on it with a 500)."""
    r = env.router()
    be = env.backend(poll_interval=None)
    b = env.browser(connect=False)
    before = upload_listing(r)
    resp = b.submit_task_multipart("", [("f", "x.bin", b"abc", "text/plain")])
    time.sleep(0.3)
    json_error(resp, 400)
    assert wait_until(lambda: upload_listing(r) == before, 2.0), upload_listing(r)
    assert be.count(of_type("submit_unit")) == 0, [short(p) for p in be.received()]


def test_submit_metadata_json_and_multipart(env):
    r = env.router()
    be = env.backend(poll_interval=None)
    b = env.browser(connect=False)
    meta = {"tips": ["use the keyboard"], "feedback": "good"}
    json_ok(b.submit_metadata(meta), {"status": "Submitted metadata"})
    p1 = be.wait_for(of_type("submit_metadata", b.agent_id))
    assert without_files(p1["data"]) == meta, short(p1)
    assert is_seconds(p1.get("client_timestamp"))
    # metadata as JSON text
    meta2 = {"feedback": "text form", "n": 2}
    json_ok(b.submit_metadata(json.dumps(meta2)), {"status": "Submitted metadata"})
    p2 = be.wait_n(of_type("submit_metadata", b.agent_id), 2)[1]
    assert without_files(p2["data"]) == meta2, short(p2)
    # multipart with a file
    meta3 = {"feedback": "with a screenshot"}
    files = [("screenshot", "shot.png", os.urandom(5000), "image/png")]
    json_ok(b.submit_metadata_multipart(json.dumps(meta3), files),
            {"status": "Submitted metadata"})
    p3 = be.wait_n(of_type("submit_metadata", b.agent_id), 3)[2]
    data = p3["data"]
    assert {k: v for k, v in data.items() if k not in ("files", "filesByFields")} == meta3
    assert is_number(p3.get("client_timestamp")), short(p3)
    check_file_records(r, data["files"], files)
    check_files_by_fields(data)
    resp = r.get("/download_file/" + data["files"][0]["filename"])
    assert resp.status_code == 200 and resp.content == files[0][2]
    time.sleep(0.7)
    assert be.count(of_type("submit_metadata")) == 3


def test_log_error_post_and_ws(env):
    env.router()
    be = env.backend(poll_interval=None)
    b = env.browser()
    b.alive()
    err = {"error": "boom", "errorInfo": {"componentStack": "at X\n at Y"}}
    json_ok(b.log_error(err), {"status": "Error log sent!"})
    p = be.wait_for(of_type("log_error", b.agent_id))
    assert p["data"] == err and is_seconds(p.get("client_timestamp")), short(p)
    # without error_data: data is {}
    json_ok(b.log_error(), {"status": "Error log sent!"})
    p = be.wait_n(of_type("log_error", b.agent_id), 2)[1]
    assert p["data"] == {}, short(p)
    # over the WebSocket: forwarded unchanged plus router timestamps
    ct = time.time()
    b.send(browser_packet("log_error", b.agent_id, {"ws": True}, client_timestamp=ct))
    p = be.wait_n(of_type("log_error", b.agent_id), 3)[2]
    assert p["data"] == {"ws": True} and p["client_timestamp"] == pytest.approx(ct, abs=1e-3)
    assert is_seconds(p.get("router_incoming_timestamp"))
    time.sleep(0.5)
    assert be.count(of_type("log_error")) == 3


# ==========================================================================
# 5. task_config.json and the version warning

def test_task_config_one_warning_per_version(env):
    r = env.router(start=False)
    raw = write_task_config(r)
    r.start()
    b = env.browser(connect=False)
    # a mismatch before any backend is attached: queued, not lost
    resp = b.task_config("2.0.3")
    assert resp.status_code == 200 and resp.content == raw
    be = env.backend(poll_interval=None)
    w1 = be.wait_for(is_version_warning, what="version-mismatch log_error")
    resp = b.task_config("2.0.4", {"workerId": "w", "assignmentId": "a"})
    assert resp.status_code == 200 and resp.content == raw
    assert media_type(resp) == "application/json", resp.headers.get("Content-Type")
    assert no_cache(resp), resp.headers.get("Cache-Control")
    for _ in range(4):
        resp = b.task_config("2.0.3")
        assert resp.status_code == 200 and resp.content == raw
    for _ in range(2):
        assert b.task_config("1.0.0").content == raw
    w2 = be.wait_n(is_version_warning, 2, what="second version warning")[1]
    time.sleep(1.0)
    warnings = be.received(is_version_warning)
    assert len(warnings) == 2, "expected one warning per distinct version, got %s" % (
        [short(w) for w in warnings])
    for w, bad in ((w1, "2.0.3"), (w2, "1.0.0")):
        assert w["data"].get("error_type") == "version-mismatch", short(w)
        text = w["data"].get("text")
        assert isinstance(text, str) and bad in text and "2.0.4" in text, short(w)


@pytest.mark.parametrize("where", ["file", "config"])
def test_task_config_expected_version(env, where):
    if where == "file":
        r = env.router(start=False)
        raw = write_task_config(r, version="3.1.4")
    else:
        r = env.router(start=False, mephisto_task_version="3.1.4")
        raw = write_task_config(r)
    r.start()
    be = env.backend(poll_interval=None)
    b = env.browser(connect=False)
    assert b.task_config("3.1.4").content == raw
    assert b.task_config("2.0.4").content == raw
    w = be.wait_for(is_version_warning)
    assert "3.1.4" in w["data"]["text"] and "2.0.4" in w["data"]["text"], short(w)
    time.sleep(0.8)
    assert len(be.received(is_version_warning)) == 1, (
        "the expected version 3.1.4 was reported as a mismatch")


# ==========================================================================
# 6. WebSocket packets

def test_alive_new_agent_gets_status_none(env):
    env.router()
    be = env.backend(poll_interval=None)
    b = env.browser()
    up = b.alive()
    assert up["subject_id"] == b.agent_id and up["data"] == {"status": "none"}, short(up)
    assert be.statuses().get(b.agent_id) == "none"


def test_heartbeat_unknown_agent_answered_on_its_socket(env):
    t0 = time.time()
    r = env.router()
    t1 = time.time()
    other = env.browser()
    b = env.browser()
    ct = time.time()
    ans = b.heartbeat(client_timestamp=ct, subject_id="never-seen-agent")
    assert ans["packet_type"] == "heartbeat" and ans["subject_id"] == "never-seen-agent"
    assert ans.get("client_timestamp") == pytest.approx(ct, abs=1e-3), short(ans)
    assert set(ans["data"]) == {"last_mephisto_ping"}, short(ans)
    lmp = ans["data"]["last_mephisto_ping"]
    assert is_number(lmp) and (t0 - 1.5) * 1000 <= lmp <= (t1 + 1.5) * 1000, (
        "last_mephisto_ping %r is not the router start time in ms (%r..%r)"
        % (lmp, t0 * 1000, t1 * 1000))
    assert other.collect(0.3) == [], "the heartbeat answer went to another socket"
    assert r.get("/is_alive").status_code == 200


def test_heartbeat_known_agent_carries_status(env):
    env.router()
    be = env.backend(poll_interval=None)
    b = env.browser()
    b.alive()
    ans = b.heartbeat()
    assert ans["data"].get("status") == "none", short(ans)
    be.set_status(b.agent_id, "waiting")
    b.recv_until(lambda p: p["packet_type"] == "update_status" and
                 p["data"].get("status") == "waiting")
    ans = b.heartbeat()
    assert set(ans["data"]) == {"last_mephisto_ping", "status"}, short(ans)
    assert ans["data"]["status"] == "waiting"
    # a heartbeat without data is answered the same way
    b.send({"packet_type": "heartbeat", "subject_id": b.agent_id,
            "client_timestamp": time.time()})
    ans = b.recv_until(of_type("heartbeat"))
    assert set(ans["data"]) == {"last_mephisto_ping", "status"}, short(ans)


def test_last_mephisto_ping_follows_request_statuses(env):
    t0 = time.time()
    env.router()
    t1 = time.time()
    be = env.backend(poll_interval=None)
    b = env.browser()
    b.alive()
    time.sleep(1.2)
    lmp = b.heartbeat(client_timestamp=None)["data"]["last_mephisto_ping"]
    assert (t0 - 0.5) * 1000 <= lmp <= (t1 + 0.5) * 1000, (
        "before any request_statuses last_mephisto_ping must be the router's "
        "start (%.0f..%.0f), got %r" % (t0 * 1000, t1 * 1000, lmp))
    tp0 = time.time()
    be.statuses()
    tp1 = time.time()
    lmp = b.heartbeat(client_timestamp=None)["data"]["last_mephisto_ping"]
    assert (tp0 - 0.5) * 1000 <= lmp <= (tp1 + 0.5) * 1000, (
        "last_mephisto_ping %r does not reflect the request_statuses at %.0f..%.0f"
        % (lmp, tp0 * 1000, tp1 * 1000))


def test_last_mephisto_ping_in_the_browsers_clock(env):
    env.router()
    be = env.backend(poll_interval=None)
    b = env.browser()
    b.alive()
    be.statuses()
    v0 = b.heartbeat(client_timestamp=time.time())["data"]["last_mephisto_ping"]
    fast_ct = time.time() + 100
    v_fast = b.heartbeat(client_timestamp=fast_ct)["data"]["last_mephisto_ping"]
    v_slow = b.heartbeat(client_timestamp=time.time() - 100)["data"]["last_mephisto_ping"]
    v_raw = b.heartbeat(client_timestamp=None)["data"]["last_mephisto_ping"]
    assert abs((v_fast - v0) - 100000) < 1500, (
        "a browser clock 100 s fast: last_mephisto_ping %r vs %r (diff %r ms, want ~100000)"
        % (v_fast, v0, v_fast - v0))
    assert abs((v0 - v_slow) - 100000) < 1500, (v0, v_slow)
    assert abs(v_raw - v0) < 1500, (v_raw, v0)
    # the fast browser does not think the backend is gone
    assert fast_ct * 1000 - v_fast < 20000


@pytest.mark.parametrize("how", ["heartbeat", "alive"])
@pytest.mark.parametrize("placement", PLACEMENTS)
def test_new_socket_reattaches(env, placement, how):
    wa, wb = placement
    env.router()
    be = env.backend(want_worker=1, poll_interval=None)
    a = env.browser(want_worker=wa)
    a.alive()
    b2 = env.browser(agent_id=a.agent_id, want_worker=wb)
    if how == "heartbeat":
        ans = b2.heartbeat()
        assert ans["data"].get("status") == "none", short(ans)
    else:
        assert b2.alive()["data"] == {"status": "none"}
    be.send(backend_packet("client_bound_live_update", a.agent_id, {"to": "new socket"}))
    p = b2.recv_until(of_type("client_bound_live_update"), what="live update on the new socket")
    assert p["data"] == {"to": "new socket"}
    assert not [p for p in a.collect(0.4) if p["packet_type"] == "client_bound_live_update"], \
        "the live update went to the old socket"


@pytest.mark.parametrize("placement", PLACEMENTS)
def test_live_updates_both_ways(env, placement):
    wb, wa = placement
    env.router()
    be = env.backend(want_worker=wb, poll_interval=None)
    b = env.browser(want_worker=wa)
    b.alive()
    sent = []
    for i in range(5):
        p = browser_packet("mephisto_bound_live_update", b.agent_id,
                           {"i": i, "text": "\u00fcn\u00efcode \u2713"},
                           custom_field="kept-%d" % i)
        sent.append(p)
        b.send(p)
    got = be.wait_n(of_type("mephisto_bound_live_update", b.agent_id), 5)
    for s, p in zip(sent, got):
        assert p["data"] == s["data"], short(p)
        assert p["client_timestamp"] == pytest.approx(s["client_timestamp"], abs=1e-3)
        assert p.get("custom_field") == s["custom_field"], (
            "packet not forwarded unchanged: %s" % short(p))
        assert is_seconds(p.get("router_incoming_timestamp")), short(p)
        assert p["router_outgoing_timestamp"] >= p["router_incoming_timestamp"] - 0.01
    out = []
    for j in range(5):
        q = backend_packet("client_bound_live_update", b.agent_id, {"j": j})
        out.append(q)
        be.send(q)
    for q in out:
        p = b.recv_until(of_type("client_bound_live_update"))
        assert p["data"] == q["data"], "out of order or wrong: %s" % short(p)
        assert p.get("server_timestamp") == pytest.approx(q["server_timestamp"], abs=1e-3)
        assert is_seconds(p.get("router_incoming_timestamp")), short(p)
    time.sleep(0.7)
    assert be.count(of_type("mephisto_bound_live_update")) == 5
    assert not [p for p in b.collect(0.1) if p["packet_type"] == "client_bound_live_update"], \
        "duplicate client-bound live updates"


def test_update_status_sets_status_and_is_forwarded(env):
    env.router()
    be = env.backend(poll_interval=None)
    b = env.browser()
    b.alive()
    be.set_status(b.agent_id, "onboarding")
    p = b.recv_until(lambda p: p["packet_type"] == "update_status" and
                     p["data"].get("status") == "onboarding")
    assert p["subject_id"] == b.agent_id
    assert be.statuses()[b.agent_id] == "onboarding"
    assert b.heartbeat()["data"]["status"] == "onboarding"
    # without data.status: forwarded, status unchanged
    be.send(backend_packet("update_status", b.agent_id, {"note": "no status"}))
    p = b.recv_until(lambda p: p["packet_type"] == "update_status" and
                     p["data"].get("note") == "no status")
    assert be.statuses()[b.agent_id] == "onboarding"
    # an unknown agent is created
    be.set_status("ghost-agent", "waiting")
    assert be.statuses().get("ghost-agent") == "waiting"


def test_request_statuses_answer(env):
    env.router()
    be = env.backend(poll_interval=None)
    agents = {}
    for status in ("none", "waiting", "in task", "completed"):
        b = env.browser()
        b.alive()
        if status != "none":
            be.set_status(b.agent_id, status)
            b.recv_until(lambda p, s=status: p["packet_type"] == "update_status" and
                         p["data"].get("status") == s)
        agents[b.agent_id] = status
    req = backend_packet("request_statuses", MEPHISTO)
    be.send(req)
    p = be.wait_for(of_type("return_statuses"))
    assert p["subject_id"] == MEPHISTO
    assert p.get("client_timestamp") == pytest.approx(req["server_timestamp"], abs=1e-3), short(p)
    assert is_seconds(p.get("router_incoming_timestamp")), short(p)
    assert p["router_incoming_timestamp"] >= req["server_timestamp"] - 1
    for aid, st in agents.items():
        assert p["data"].get(aid) == st, (aid, st, p["data"])
    assert all(isinstance(v, str) for v in p["data"].values()), p["data"]


def test_later_backend_replaces_earlier(env):
    env.router()
    be1 = env.backend(want_worker=1, poll_interval=None)
    be2 = env.backend(want_worker=2, poll_interval=None)
    be2.statuses()  # its alive is processed
    b = env.browser()
    b.alive()
    b.send_packet("mephisto_bound_live_update", {"to": "latest backend"})
    be2.wait_for(of_type("mephisto_bound_live_update"))
    time.sleep(0.5)
    assert be1.count(of_type("mephisto_bound_live_update")) == 0, \
        "the replaced backend still gets packets"


def test_backend_only_types_from_agents_are_dropped(env):
    env.router(request_timeout=1.5)
    be = env.backend(answer=False, poll_interval=None)
    victim = env.browser()
    victim.alive()
    evil = env.browser()
    evil.alive()
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        fut = pool.submit(timed, env.browser(connect=False).request_agent)
        rid = be.wait_for(of_type("register_agent"))["subject_id"]
        forged = [
            browser_packet("agent_details", rid, {"request_id": rid, "agent_id": "forged"}),
            browser_packet("update_status", evil.agent_id, {"status": "completed"}),
            browser_packet("update_status", victim.agent_id, {"status": "completed"}),
            browser_packet("client_bound_live_update", victim.agent_id, {"forged": True}),
            browser_packet("request_statuses", MEPHISTO, {}),
            browser_packet("return_statuses", MEPHISTO, {victim.agent_id: "approved"}),
            browser_packet("register_agent", "x", {"provider_data": {}, "request_id": "x"}),
            browser_packet("submit_unit", evil.agent_id, {"forged": True}),
            browser_packet("submit_onboarding", evil.agent_id, {"request_id": "y"}),
            browser_packet("submit_metadata", evil.agent_id, {"forged": True}),
        ]
        for p in forged:
            evil.send(p)
        resp, elapsed = fut.result(10)
    json_error(resp, 408)
    assert evil.served() and victim.served() and be.ping_ok()
    st = be.statuses()
    assert st.get(evil.agent_id) == "none" and st.get(victim.agent_id) == "none", st
    for p in victim.collect(0.3) + evil.collect(0.1):
        assert p["packet_type"] == "heartbeat", "forged packet delivered: %s" % short(p)
    types = [p["packet_type"] for p in be.received()]
    assert sorted(types) == ["register_agent", "return_statuses"], (
        "the backend got forged packets: %s" % types)
    assert be.count(of_type("register_agent")) == 1


def test_agent_types_from_backend_are_dropped(env):
    env.router()
    be = env.backend(poll_interval=None)
    b = env.browser()
    b.alive()
    be.send(backend_packet("mephisto_bound_live_update", b.agent_id, {"loop": 1}))
    be.send(backend_packet("log_error", b.agent_id, {"loop": 2}))
    be.send(backend_packet("submit_unit", b.agent_id, {"loop": 3}))
    assert be.statuses() is not None and be.ping_ok()
    b.send_packet("mephisto_bound_live_update", {"real": 1})
    be.wait_for(of_type("mephisto_bound_live_update"))
    time.sleep(0.3)
    looped = be.received(lambda p: "loop" in p.get("data", {}))
    assert looped == [], "backend got its own packets back: %s" % [short(p) for p in looped]
    assert not [p for p in b.collect(0.2) if "loop" in p.get("data", {})]
    assert b.served()


# ==========================================================================
# 7. queues, order, exactly once, latency

@pytest.mark.parametrize("placement", PLACEMENTS)
def test_backend_queue_delivered_in_order_on_alive(env, placement):
    wa, wb = placement
    env.router()
    b = env.browser(want_worker=wa)
    b.alive()
    for i in range(50):
        b.send_packet("mephisto_bound_live_update", {"n": i})
    assert b.served()
    be = env.backend(want_worker=wb, poll_interval=None)
    be.wait_n(of_type("mephisto_bound_live_update"), 50, timeout=5)
    time.sleep(1.0)
    got = be.received(of_type("mephisto_bound_live_update"))
    assert live_update_numbers(got) == list(range(50)), live_update_numbers(got)


def test_backend_reconnect_loses_nothing(env):
    env.router()
    be = env.backend(want_worker=1, poll_interval=None)
    b = env.browser(want_worker=2)
    b.alive()
    for i in range(5):
        b.send_packet("mephisto_bound_live_update", {"n": i})
    be.wait_n(of_type("mephisto_bound_live_update"), 5)
    be.abort()
    time.sleep(0.3)
    for i in range(5, 15):
        b.send_packet("mephisto_bound_live_update", {"n": i})
    assert b.served()
    be2 = env.backend(want_worker=2, poll_interval=None)
    for i in range(15, 20):
        b.send_packet("mephisto_bound_live_update", {"n": i})
    be2.wait_n(of_type("mephisto_bound_live_update"), 15)
    time.sleep(0.7)
    got = live_update_numbers(be2.received(of_type("mephisto_bound_live_update")))
    assert got == list(range(5, 20)), got


@pytest.mark.parametrize("placement", PLACEMENTS)
def test_agent_queue_delivered_after_update_status(env, placement):
    wb, wa = placement
    r = env.router()
    be = env.backend(want_worker=wb, poll_interval=None)
    aid = "agent-queued-" + uuid.uuid4().hex[:6]
    for i in range(20):
        be.send(backend_packet("client_bound_live_update", aid, {"n": i}))
    assert be.statuses().get(aid) == "none"
    b = env.browser(router=r, agent_id=aid, want_worker=wa)
    b.send_packet("alive")
    for i in range(20, 30):
        be.send(backend_packet("client_bound_live_update", aid, {"n": i}))
    received = []
    deadline = time.monotonic() + 6
    for _ in range(200):
        if sum(p["packet_type"] == "client_bound_live_update" for p in received) >= 30:
            break
        if time.monotonic() > deadline:
            break
        received.append(b.recv(timeout=max(0.1, deadline - time.monotonic())))
    assert received and received[0]["packet_type"] == "update_status", (
        "first packet after alive: %s" % (short(received[0]) if received else None))
    assert received[0]["data"] == {"status": "none"}
    ns = [p["data"]["n"] for p in received if p["packet_type"] == "client_bound_live_update"]
    assert ns == list(range(30)), ns
    extra = [p for p in b.collect(0.8) if p["packet_type"] == "client_bound_live_update"]
    assert not extra, "duplicates: %s" % [short(p) for p in extra]


def test_agent_queue_after_detach(env):
    r = env.router()
    be = env.backend(poll_interval=None)
    b = env.browser()
    b.alive()
    be.set_status(b.agent_id, "in task")
    b.recv_until(lambda p: p["data"].get("status") == "in task")
    b.close()
    time.sleep(0.3)
    for i in range(5):
        be.send(backend_packet("client_bound_live_update", b.agent_id, {"n": i}))
    be.statuses()
    b2 = env.browser(router=r, agent_id=b.agent_id)
    b2.send_packet("alive")
    first = b2.recv()
    assert first["packet_type"] == "update_status" and \
        first["data"] == {"status": "in task"}, short(first)
    ns = [b2.recv_until(of_type("client_bound_live_update"))["data"]["n"] for _ in range(5)]
    assert ns == list(range(5)), ns


@pytest.mark.parametrize("placement", PLACEMENTS)
def test_socket_dropped_mid_stream_no_duplicates(env, placement):
    """Packets a worker could not write to a dropped socket go back to the
    queue in their place: the next socket gets no duplicates and no
    reordering, and everything sent after the drop."""
    wb, wa = placement
    r = env.router()
    be = env.backend(want_worker=wb, poll_interval=None)
    a = env.browser(want_worker=wa)
    a.alive()
    for i in range(100):
        be.send(backend_packet("client_bound_live_update", a.agent_id,
                               {"n": i, "pad": "x" * 2000}))
    first = [a.recv_until(of_type("client_bound_live_update"))["data"]["n"] for _ in range(10)]
    a.abort()
    time.sleep(0.3)
    for i in range(100, 200):
        be.send(backend_packet("client_bound_live_update", a.agent_id, {"n": i}))
    be.statuses()
    a2 = env.browser(router=r, agent_id=a.agent_id, want_worker=wa)
    a2.send_packet("alive")
    got = []
    deadline = time.monotonic() + 6
    for _ in range(400):
        if 199 in got or time.monotonic() > deadline:
            break
        p = a2.recv(timeout=max(0.1, deadline - time.monotonic()))
        if p["packet_type"] == "client_bound_live_update":
            got.append(p["data"]["n"])
    got += [p["data"]["n"] for p in a2.collect(0.5)
            if p["packet_type"] == "client_bound_live_update"]
    assert first == list(range(10)), first
    assert got == sorted(got) and len(set(got)) == len(got), "reordered or doubled: %s" % got
    assert not set(first) & set(got), "delivered twice: %s" % sorted(set(first) & set(got))
    assert set(range(100, 200)) <= set(got), "lost after the drop: %s" % sorted(
        set(range(100, 200)) - set(got))


def test_delivery_is_immediate(env):
    env.router()
    be = env.backend(want_worker=1, poll_interval=None)
    b = env.browser(want_worker=2)
    b.alive()
    up, down = [], []
    for i in range(20):
        t0 = time.monotonic()
        b.send_packet("mephisto_bound_live_update", {"n": i})
        be.wait_for(lambda p, i=i: p["packet_type"] == "mephisto_bound_live_update" and
                    p["data"].get("n") == i)
        up.append(time.monotonic() - t0)
        t0 = time.monotonic()
        be.send(backend_packet("client_bound_live_update", b.agent_id, {"n": i}))
        b.recv_until(of_type("client_bound_live_update"))
        down.append(time.monotonic() - t0)
    up.sort()
    down.sort()
    # a 50 ms flush timer would give a median near 25 ms
    assert up[10] < 0.02, "median agent->backend latency %.1f ms" % (up[10] * 1000)
    assert down[10] < 0.02, "median backend->agent latency %.1f ms" % (down[10] * 1000)


def test_agent_queue_is_bounded(env):
    r = env.router(max_agent_queue=5)
    be = env.backend(poll_interval=None)
    aid = "agent-bounded"
    for i in range(12):
        be.send(backend_packet("client_bound_live_update", aid, {"n": i}))
    assert be.statuses().get(aid) is not None
    b = env.browser(router=r, agent_id=aid)
    b.alive()
    ns = [p["data"]["n"] for p in b.collect(1.0)
          if p["packet_type"] == "client_bound_live_update"]
    assert 1 <= len(ns) <= 5 and ns == sorted(ns), ns
    assert be.ping_ok() and b.served()


def test_backend_queue_is_bounded(env):
    env.router(max_backend_queue=5)
    b = env.browser()
    b.alive()
    for i in range(12):
        b.send_packet("mephisto_bound_live_update", {"n": i})
    assert b.served()
    be = env.backend(poll_interval=None)
    be.statuses()
    time.sleep(0.5)
    ns = live_update_numbers(be.received(of_type("mephisto_bound_live_update")))
    assert 1 <= len(ns) <= 5 and ns == sorted(ns), ns
    b.send_packet("mephisto_bound_live_update", {"n": 100})
    be.wait_for(lambda p: p["data"].get("n") == 100)


def test_backend_queue_age_limit(env):
    env.router(max_backend_queue_age=0.5)
    b = env.browser()
    b.alive()
    for i in range(3):
        b.send_packet("mephisto_bound_live_update", {"n": i})
    assert b.served()
    time.sleep(1.3)
    for i in (100, 101):
        b.send_packet("mephisto_bound_live_update", {"n": i})
    assert b.served()
    be = env.backend(poll_interval=None)
    be.wait_n(of_type("mephisto_bound_live_update"), 2)
    time.sleep(0.5)
    ns = live_update_numbers(be.received(of_type("mephisto_bound_live_update")))
    assert ns == [100, 101], "packets older than max_backend_queue_age delivered: %s" % ns


# ==========================================================================
# 8. liveness

def _agents_with_statuses(env, be, statuses):
    agents = {}
    for st in statuses:
        b = env.browser()
        b.alive()
        if st != "none":
            be.set_status(b.agent_id, st)
            b.recv_until(lambda p, s=st: p["packet_type"] == "update_status" and
                         p["data"].get("status") == s)
        agents[st] = b
    cur = be.statuses()
    for st, b in agents.items():
        assert cur.get(b.agent_id) == st, (st, cur)
    return agents


def test_closed_socket_disconnects_after_grace(env):
    grace = 1.0
    env.router(reconnect_grace=grace)
    be = env.backend(poll_interval=0.25)
    dropping = ("none", "accepted", "onboarding", "waiting", "in task")
    agents = _agents_with_statuses(env, be, dropping + FINAL_STATUSES)
    t0 = time.monotonic()
    for i, st in enumerate(agents):
        (agents[st].close if i % 2 else agents[st].abort)()
    time.sleep(0.4)
    cur = be.statuses()
    for st, b in agents.items():
        assert cur.get(b.agent_id) == st, (
            "%r changed to %r within the reconnect grace" % (st, cur.get(b.agent_id)))

    def all_dropped():
        c = be.statuses()
        return all(c.get(agents[st].agent_id) == "disconnect" for st in dropping) and c
    cur = wait_until(all_dropped, grace + 4, interval=0.2)
    elapsed = time.monotonic() - t0
    assert cur, "not all of %s became disconnect: %s" % (dropping, be.statuses())
    assert elapsed >= grace - 0.15, "disconnect after %.2f s, grace is %s" % (elapsed, grace)
    time.sleep(0.3)
    cur = be.statuses()
    for st in FINAL_STATUSES:
        assert cur.get(agents[st].agent_id) == st, (
            "final status %r became %r" % (st, cur.get(agents[st].agent_id)))


@pytest.mark.parametrize("how", ["alive", "heartbeat"])
def test_reconnect_within_grace_keeps_status(env, how):
    grace = 1.2
    r = env.router(reconnect_grace=grace)
    be = env.backend(poll_interval=0.25)
    b = _agents_with_statuses(env, be, ["in task"])["in task"]
    b.abort()
    time.sleep(0.3)
    b2 = env.browser(router=r, agent_id=b.agent_id)
    if how == "alive":
        assert b2.alive()["data"] == {"status": "in task"}
    else:
        assert b2.heartbeat()["data"]["status"] == "in task"
    time.sleep(grace + 0.6)
    assert be.statuses().get(b.agent_id) == "in task", "reattached agent disconnected"
    be.send(backend_packet("client_bound_live_update", b.agent_id, {"after": "reconnect"}))
    b2.recv_until(of_type("client_bound_live_update"))


def test_heartbeat_silence_disconnects_live_agents(env):
    hb = 1.5
    env.router(heartbeat_timeout=hb, reconnect_grace=30)
    be = env.backend(poll_interval=0.25)
    ag = _agents_with_statuses(env, be, ["in task", "waiting", "accepted", "onboarding"])
    silent, beating, not_live, never = (ag["in task"], ag["waiting"], ag["accepted"],
                                        ag["onboarding"])
    t0 = time.monotonic()
    silent.heartbeat()
    not_live.heartbeat()
    # `never` never heartbeats: the rule does not apply to it
    deadline = t0 + hb + 3
    got = None
    for _ in range(200):
        if time.monotonic() > deadline:
            break
        beating.heartbeat()
        if time.monotonic() - t0 < hb - 0.3:
            assert be.statuses().get(silent.agent_id) == "in task", "disconnected too early"
        for p in silent.collect(0.25):
            if p["packet_type"] == "update_status" and p["data"].get("status") == "disconnect":
                got = time.monotonic() - t0
        if got is not None:
            break
    assert got is not None, "silent agent not sent update_status disconnect within %.1f s" % (
        hb + 3)
    assert got >= hb - 0.2, "disconnect after %.2f s of silence, timeout %s" % (got, hb)
    cur = be.statuses()
    assert cur.get(silent.agent_id) == "disconnect", cur
    assert cur.get(beating.agent_id) == "waiting", cur
    assert cur.get(not_live.agent_id) == "accepted", cur
    assert cur.get(never.agent_id) == "onboarding", cur


# ==========================================================================
# 9. waiting requests end

def test_waiting_requests_time_out(env):
    env.router(request_timeout=1)
    b = env.browser(connect=False)
    # no backend at all
    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        f1 = pool.submit(timed, b.request_agent)
        f2 = pool.submit(timed, b.submit_onboarding, {"x": 1}, "agent-ob")
        (r1, e1), (r2, e2) = f1.result(10), f2.result(10)
    for resp, elapsed in ((r1, e1), (r2, e2)):
        json_error(resp, 408)
        assert 0.7 <= elapsed <= 4, "answered after %.2f s, request_timeout 1" % elapsed
    # a backend that does not answer
    be = env.backend(answer=False, poll_interval=None)
    be.wait_n(lambda p: p["packet_type"] in ("register_agent", "submit_onboarding"), 2)
    resp, elapsed = timed(b.request_agent, {"worker_name": "late"})
    json_error(resp, 408)
    assert 0.7 <= elapsed <= 4, elapsed
    reg = be.wait_for(lambda p: p["packet_type"] == "register_agent" and
                      p["data"]["provider_data"] == {"worker_name": "late"})
    # a late answer is dropped harmlessly
    be.send(backend_packet("agent_details", reg["subject_id"],
                           {"request_id": reg["subject_id"], "agent_id": "late"}))
    assert be.ping_ok() and be.is_open
    be.answer = True
    body = json_ok(b.request_agent({"worker_name": "on time"}))
    assert body["packet_type"] == "agent_details"


# ==========================================================================
# 10. files

def test_download_file_serves_only_stored_uploads(env):
    r = env.router()
    be = env.backend(poll_interval=None)
    b = env.browser(connect=False)
    content = b"stored-upload-marker\n"
    json_ok(b.submit_task_multipart(json.dumps({"a": 1}),
                                    [("f", "x.txt", content, "text/plain")]))
    rec = be.wait_for(of_type("submit_unit"))["data"]["files"][0]
    stored = rec["filename"]
    resp = r.get("/download_file/" + stored)
    assert resp.status_code == 200 and resp.content == content
    up = r.dir / "uploads"
    (up / "planted.txt").write_bytes(b"planted-secret")
    (up / "sub").mkdir()
    (up / "sub" / "inner.txt").write_bytes(b"inner-secret")
    secrets = [b"planted-secret", b"inner-secret", r.config_path.read_bytes(), b"root:x:0:0"]
    targets = [
        "/download_file/planted.txt", "/download_file/nonexistent-file",
        "/download_file/../router.conf", "/download_file/..%2frouter.conf",
        "/download_file/%2e%2e%2frouter.conf", "/download_file/%2e%2e/router.conf",
        "/download_file/%2E%2E%2Frouter.conf", "/download_file/..%5crouter.conf",
        "/download_file/%2fetc%2fpasswd", "/download_file//etc/passwd",
        "/download_file/%2Fetc%2Fpasswd", "/download_file/sub/inner.txt",
        "/download_file/sub%2finner.txt", "/download_file/", "/download_file/.",
        "/download_file/..", "/download_file/%2e%2e",
        "/download_file/" + stored + "/..%2fplanted.txt",
        "/download_file/" + stored + "%2f..%2fplanted.txt",
        "/download_file/..%2f..%2f..%2f..%2f..%2f..%2fetc%2fpasswd",
    ]
    for t in targets:
        status, _, body, note = raw_get(r.port, t)
        for s in secrets:
            assert s not in body, "%s leaked a file" % t
        if t in ("/download_file/..", "/download_file/%2e%2e") and status == 200:
            # dot segments removed (RFC 3986): this is GET /, the index page
            assert body == r.static_files["index.html"], (t, body[:100])
            continue
        assert status == 404, "%s -> %s (%s)" % (t, status, note)
    json_error(r.get("/download_file/nonexistent-file"), 404)
    assert r.get("/download_file/" + stored).content == content


def test_upload_names_never_come_from_the_client(env):
    r = env.router()
    be = env.backend(poll_interval=None)
    b = env.browser(connect=False)
    tag = uuid.uuid4().hex[:8]
    names = ["../../escape1-%s.txt" % tag, "/tmp/escape2-%s.txt" % tag,
             "sub/dir/escape3-%s.txt" % tag, ".escape4-%s" % tag, "a" * 300]
    files = [("f%d" % i, n, ("content %d" % i).encode(), "text/plain")
             for i, n in enumerate(names)]
    json_ok(b.submit_task_multipart(json.dumps({"a": 1}), files))
    recs = be.wait_for(of_type("submit_unit"))["data"]["files"]
    assert len(recs) == len(files)
    up = r.dir / "uploads"
    for rec in recs:
        fn = rec["filename"]
        assert "/" not in fn and "\\" not in fn and not fn.startswith("."), rec
        assert (up / fn).is_file()
        assert r.get("/download_file/" + fn).status_code == 200
    leaked = [str(p) for p in env.tmp_path.rglob("*escape*")] + \
        [str(p) for p in Path("/tmp").glob("escape2-%s*" % tag)]
    assert not leaked, "client file names used as paths: %s" % leaked


def test_large_upload(env):
    """An upload bigger than max_message_bytes (IPC frames) still works."""
    r = env.router(max_body_bytes="8M", max_message_bytes="1M")
    be = env.backend(poll_interval=None)
    b = env.browser(connect=False)
    content = os.urandom(3 * 1024 * 1024 + 17)
    json_ok(b.submit_task_multipart(json.dumps({"big": True}),
                                    [("video", "clip.webm", content, "video/webm")],
                                    timeout=20))
    rec = be.wait_for(of_type("submit_unit"), timeout=10)["data"]["files"][0]
    assert rec["size"] == len(content)
    resp = r.get("/download_file/" + rec["filename"], timeout=20)
    assert resp.status_code == 200 and resp.content == content


# ==========================================================================
# 11. bad input

BAD_WS_FRAMES = [
    "not json at all",
    '{"packet_type": "heartbeat"',
    "[1, 2, 3]",
    '"a string"',
    "null",
    "42",
    "{}",
    '{"subject_id": "x", "data": {}}',
    '{"packet_type": "heartbeat", "data": {}}',
    '{"packet_type": 7, "subject_id": "x", "data": {}}',
    '{"packet_type": "heartbeat", "subject_id": 12, "data": {}}',
    '{"packet_type": "alive", "subject_id": null}',
    '{"packet_type": "alive", "subject_id": ["a"]}',
    '{"packet_type": "bogus_type", "subject_id": "x", "data": {}}',
    '{"packet_type": "", "subject_id": "x", "data": {}}',
    '{"packet_type": "mephisto_bound_live_update", "subject_id": "bad-agent", "data": "str"}',
    '{"packet_type": "mephisto_bound_live_update", "subject_id": "bad-agent", "data": [1]}',
    '{"packet_type": "mephisto_bound_live_update", "subject_id": "bad-agent"}',
    '{"packet_type": "heartbeat", "subject_id": "x", "client_timestamp": "soon"}',
    '{"packet_type": "heartbeat", "subject_id": "x", "client_timestamp": 1e999}',
    "[" * 100000 + "]" * 100000,
    '{"a":' * 50000 + "1" + "}" * 50000,
    '{"packet_type": "mephisto_bound_live_update", "subject_id": "bad\\u0000agent", "data": {}}',
]


def test_bad_frames_from_an_agent(env):
    r = env.router()
    be = env.backend(poll_interval=None)
    sender = env.browser()
    sender.alive()
    other = env.browser()
    other.alive()
    for k, frame in enumerate(BAD_WS_FRAMES):
        sender.send(frame)
        assert sender.served(), "sender not served after frame %d %s" % (k, short(frame, 80))
        other.send_packet("mephisto_bound_live_update", {"marker": k})
        be.wait_for(lambda p, k=k: p.get("data", {}).get("marker") == k,
                    what="marker %d after bad frame %s" % (k, short(frame, 80)))
        be.send(backend_packet("client_bound_live_update", other.agent_id, {"back": k}))
        got = other.recv_until(of_type("client_bound_live_update"))
        assert got["data"] == {"back": k}
    assert r.get("/is_alive").status_code == 200
    assert be.is_open and be.ping_ok()
    markers = [p["data"]["marker"] for p in be.received(
        lambda p: "marker" in p.get("data", {}))]
    assert markers == list(range(len(BAD_WS_FRAMES))), markers
    for p in be.received():
        # the only packets from the bad frames that may reach the backend are
        # the live updates, and only with an object as data (checked for
        # every packet by the fake backend)
        assert p["packet_type"] == "mephisto_bound_live_update", short(p)
    st = be.statuses()
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in st.items()), st


BAD_BACKEND_FRAMES = [
    "garbage from the backend",
    "{}",
    "[]",
    '{"packet_type": "client_bound_live_update", "subject_id": 5, "data": {}}',
    '{"packet_type": "client_bound_live_update", "data": {}}',
    '{"packet_type": "update_status", "subject_id": "ghost-AGENT", "data": "x"}',
    '{"packet_type": "update_status", "subject_id": "AGENT", "data": {"status": 5}}',
    '{"packet_type": "update_status", "subject_id": "ghost-AGENT"}',
    '{"packet_type": "agent_details", "subject_id": "nobody", "data": 5}',
    '{"packet_type": "agent_details", "subject_id": 17}',
    '{"packet_type": "request_statuses"}',
    '{"packet_type": "no_such_type", "subject_id": "mephisto", "data": {}}',
]


def test_bad_frames_from_the_backend(env):
    env.router()
    be = env.backend(poll_interval=None)
    b = env.browser()
    b.alive()
    for k, frame in enumerate(BAD_BACKEND_FRAMES):
        be.send(frame.replace("AGENT", b.agent_id))
        assert be.ping_ok(), "backend socket closed by %s" % frame
        b.send_packet("mephisto_bound_live_update", {"marker": k})
        be.wait_for(lambda p, k=k: p.get("data", {}).get("marker") == k,
                    what="marker %d after %s" % (k, frame))
        assert b.served()
    st = be.statuses()
    assert st.get(b.agent_id) == "none", st
    assert all(isinstance(v, str) for v in st.values()), st
    json_ok(env.browser(connect=False).request_agent())


def test_oversized_frame_closes_only_its_sender(env):
    env.router(max_message_bytes="64K")
    be = env.backend(poll_interval=None)
    a = env.browser()
    a.alive()
    other = env.browser()
    other.alive()
    a.send_packet("mephisto_bound_live_update", {"pad": "x" * 100000})
    assert a.ws.wait_closed(5) == 1009
    other.send_packet("mephisto_bound_live_update", {"after": 1})
    be.wait_for(lambda p: p["data"].get("after") == 1)
    assert other.served() and be.ping_ok()
    assert not be.received(lambda p: "pad" in p["data"])


def test_nothing_over_the_backend_frame_limit_is_sent(env):
    limit = 32 * 1024
    r = env.router(max_message_bytes="256K", backend_max_frame_bytes="32K",
                   max_body_bytes="1M")
    # the fake backend closes with 1009 on a larger frame, like Mephisto's
    be = env.backend(poll_interval=None, max_size=limit)
    b = env.browser()
    b.alive()
    before = upload_listing(r)
    b.send_packet("mephisto_bound_live_update", {"pad": "x" * 40000})
    b.send_packet("mephisto_bound_live_update", {"after": "ws"})
    be.wait_for(lambda p: p["data"].get("after") == "ws")
    json_error(b.submit_task({"pad": "x" * 40000}), 413)
    json_error(b.request_agent({"pad": "x" * 40000}), 413)
    json_error(b.log_error({"pad": "x" * 40000}), 413)
    json_error(b.submit_task_multipart(json.dumps({"pad": "x" * 40000}),
                                       [("f", "f.txt", b"small", "text/plain")]), 413)
    assert upload_listing(r) == before, "a refused upload left files"
    # files do not count: only their records travel to the backend
    json_ok(b.submit_task_multipart(json.dumps({"ok": 1}),
                                    [("f", "big.bin", os.urandom(200000),
                                      "application/octet-stream")]))
    pkt = be.wait_for(of_type("submit_unit"))
    assert pkt["data"]["files"][0]["size"] == 200000
    assert be.is_open and be.ping_ok(), "backend channel broken (code %s)" % be.close_code
    assert not be.received(lambda p: "pad" in p.get("data", {}))
    assert b.served()


def _json_body_of_size(size):
    base = {"USED_AGENT_ID": "agent-size", "error_data": {"pad": ""},
            "client_timestamp": 1700000000.5}
    n = size - len(json.dumps(base).encode())
    assert n >= 0
    base["error_data"]["pad"] = "p" * n
    raw = json.dumps(base).encode()
    assert len(raw) == size
    return raw


def test_body_size_limit(env):
    limit = 64 * 1024
    r = env.router(max_body_bytes="64K")
    be = env.backend(poll_interval=None)
    bystander = env.browser()
    bystander.alive()
    # exactly the limit is accepted
    status, _, body, note = raw_post(r.port, "/log_error", _json_body_of_size(limit))
    assert status == 200, (status, body[:200], note)
    be.wait_for(of_type("log_error", "agent-size"))
    # one byte more is refused
    status, _, body, note = raw_post(r.port, "/log_error", _json_body_of_size(limit + 1))
    assert status == 413 and body_error_key(body), (status, body[:200], note)
    # multipart over the limit: refused, no file left
    before = upload_listing(r)
    b = env.browser(connect=False)
    body, ctype = multipart_body(
        {"USED_AGENT_ID": "agent-size", "final_string_data": "{}"},
        [("f", "big.bin", os.urandom(limit), "application/octet-stream")])
    status, _, body, note = raw_post(r.port, "/submit_task", body, content_type=ctype)
    assert status == 413 and body_error_key(body), (status, body[:200], note)
    assert upload_listing(r) == before, "a refused upload left files"
    # far over: refused (an answer or a closed connection), no crash
    status, _, body, note = raw_post(r.port, "/submit_task",
                                     b'{"USED_AGENT_ID": "x", "final_data": {"p": "'
                                     + b"q" * (2 * 1024 * 1024) + b'"}}')
    assert status in (413, None), (status, note)
    time.sleep(0.3)
    assert be.count(of_type("log_error")) == 1
    assert be.count(of_type("submit_unit")) == 0
    json_ok(r.get("/is_alive"))
    json_ok(b.log_error({"still": "served"}))
    assert bystander.served()


def test_chunked_post_is_411(env):
    r = env.router()
    be = env.backend(poll_interval=None)
    payload = json.dumps({"USED_AGENT_ID": "a", "final_data": {"x": 1},
                          "client_timestamp": 1.0}).encode()
    req = (b"POST /submit_task HTTP/1.1\r\nHost: 127.0.0.1\r\n"
           b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n"
           b"Connection: close\r\n\r\n" + b"%x\r\n" % len(payload) + payload +
           b"\r\n0\r\n\r\n")
    bystander = env.browser()
    bystander.alive()
    status, _, body, note = raw_request(r.port, req)
    assert status == 411 and body_error_key(body), (status, body[:200], note)
    time.sleep(0.3)
    assert be.count(of_type("submit_unit")) == 0
    json_ok(r.get("/is_alive"))
    assert bystander.served() and be.ping_ok()


@pytest.mark.parametrize("path", ["/request_agent", "/submit_onboarding", "/submit_task",
                                  "/submit_metadata", "/log_error"])
def test_malformed_json_is_400(env, path):
    r = env.router()
    be = env.backend(poll_interval=None)
    bystander = env.browser()
    bystander.alive()
    for bad in (b'{"USED_AGENT_ID": ', b"not json", b'{"a": 1} trailing', b"\xff\xfe"):
        json_error(post_raw(r.url, path, bad), 400)
    time.sleep(0.3)
    assert [p for p in be.received() if p["packet_type"] != "return_statuses"] == []
    json_ok(r.get("/is_alive"))
    assert bystander.served() and be.ping_ok()


MALFORMED_MULTIPART = [
    ("no_boundary", "multipart/form-data",
     b'--XyZ\r\nContent-Disposition: form-data; name="USED_AGENT_ID"\r\n\r\na\r\n--XyZ--\r\n'),
    ("truncated", "multipart/form-data; boundary=XyZ",
     b'--XyZ\r\nContent-Disposition: form-data; name="USED_AGENT_ID"\r\n\r\na\r\n'
     b'--XyZ\r\nContent-Disposition: form-data; name="final_string_data"\r\n\r\n{}\r\n'
     b'--XyZ\r\nContent-Disposition: form-data; name="f"; filename="t.bin"\r\n'
     b'Content-Type: application/octet-stream\r\n\r\n' + b"z" * 50000),
    ("garbage", "multipart/form-data; boundary=XyZ", b"this is not multipart at all"),
    ("bad_part_headers", "multipart/form-data; boundary=XyZ",
     b"--XyZ\r\nNo-Colon-Header\r\n\r\nvalue\r\n--XyZ--\r\n"),
]


@pytest.mark.parametrize("name,ctype,body", MALFORMED_MULTIPART,
                         ids=[m[0] for m in MALFORMED_MULTIPART])
def test_malformed_multipart_is_400(env, name, ctype, body):
    r = env.router()
    be = env.backend(poll_interval=None)
    bystander = env.browser()
    bystander.alive()
    before = upload_listing(r)
    json_error(post_raw(r.url, "/submit_task", body, content_type=ctype), 400)
    assert upload_listing(r) == before, "a refused upload left files: %s" % upload_listing(r)
    time.sleep(0.3)
    assert be.count(of_type("submit_unit")) == 0
    json_ok(env.browser(connect=False).submit_task({"ok": 1}), {"status": "Submitted!"})
    assert bystander.served() and be.ping_ok()


ODD_BODIES = [
    ("/submit_task", {}),
    ("/submit_task", {"USED_AGENT_ID": 5, "final_data": {}}),
    ("/submit_task", {"USED_AGENT_ID": "odd-1", "final_data": "text"}),
    ("/submit_task", {"USED_AGENT_ID": "odd-2", "final_data": [1, 2]}),
    ("/submit_task", {"USED_AGENT_ID": "odd-3", "final_data": {}, "client_timestamp": "x"}),
    ("/submit_task", []),
    ("/submit_task", "string"),
    ("/submit_task", None),
    ("/request_agent", {}),
    ("/request_agent", []),
    ("/request_agent", {"provider_data": "x", "client_timestamp": "y"}),
    ("/submit_onboarding", {}),
    ("/submit_onboarding", {"provider_data": "x"}),
    ("/submit_onboarding", {"provider_data": {"USED_AGENT_ID": 7}}),
    ("/submit_onboarding", {"provider_data": {"USED_AGENT_ID": "odd-4", "onboarding_data": 5}}),
    ("/submit_metadata", {"USED_AGENT_ID": "odd-5", "metadata": "not json"}),
    ("/submit_metadata", {"USED_AGENT_ID": "odd-6", "metadata": 5}),
    ("/submit_metadata", {"USED_AGENT_ID": "odd-7"}),
    ("/log_error", {"USED_AGENT_ID": "odd-8", "error_data": 5}),
    ("/log_error", {"error_data": {}}),
]


def test_missing_or_wrong_typed_fields(env):
    """The spec leaves the answer open (400, or accepted); what is required:
    never a 5xx, a JSON answer, an "error" key on a 4xx, the router keeps
    serving, and anything that reaches the backend is a valid packet (the
    fake backend checks: string subject_id, object data)."""
    r = env.router(request_timeout=1)
    be = env.backend(poll_interval=None)
    bystander = env.browser()
    bystander.alive()
    outcomes = []
    for path, body in ODD_BODIES:
        if body is None:
            resp = post_raw(r.url, path, b"null")
        else:
            resp = post_json(r.url, path, body)
        outcomes.append("%s %s -> %d" % (path, json.dumps(body), resp.status_code))
        assert resp.status_code in (200, 400, 408), outcomes[-1] + " " + resp.text[:200]
        assert media_type(resp) == "application/json", outcomes[-1]
        if resp.status_code >= 400:
            assert "error" in resp.json(), outcomes[-1]
    print("\n".join(outcomes))
    for p in be.received():
        print("backend got:", short(p, 200))
    json_ok(r.get("/is_alive"))
    assert be.ping_ok() and bystander.served()
    json_ok(env.browser(connect=False).request_agent())


def test_requester_gone_before_the_answer(env):
    r = env.router()
    be = env.backend(details_delay=0.5, poll_interval=None)
    body = json.dumps({"provider_data": {"worker_name": "impatient"},
                       "client_timestamp": time.time()}).encode()
    with socket.create_connection(("127.0.0.1", r.port), timeout=5) as s:
        s.sendall(b"POST /request_agent HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                  b"Content-Type: application/json\r\nContent-Length: "
                  + str(len(body)).encode() + b"\r\n\r\n" + body)
        be.wait_for(of_type("register_agent"))
    time.sleep(1.0)  # the answer comes for a closed connection
    assert r.proc.poll() is None
    assert be.ping_ok()
    json_ok(env.browser(connect=False).request_agent())
    json_ok(r.get("/is_alive"))


def test_worker_death(env):
    """A killed worker takes its sockets: the backend on it reconnects and
    misses nothing, its agents get the reconnect grace, the other worker's
    agents are untouched."""
    grace = 1.0
    r = env.router(reconnect_grace=grace)
    be = env.backend(want_worker=1, poll_interval=None)
    kept = env.browser(want_worker=2)
    kept.alive()
    lost = env.browser(want_worker=1)
    lost.alive()
    be.set_status(lost.agent_id, "in task")
    be.set_status(kept.agent_id, "in task")
    lost.recv_until(lambda p: p["data"].get("status") == "in task")
    kept.recv_until(lambda p: p["data"].get("status") == "in task")
    r.expect_worker_death(1, signal.SIGKILL)  # on purpose: tell the guard
    os.kill(r.workers_by_slot()[1], signal.SIGKILL)
    assert be.wait_closed(3), "backend socket still open after its worker died"
    for i in range(5):
        kept.send_packet("mephisto_bound_live_update", {"n": i})
    assert kept.served()
    r.wait_workers(2, timeout=5)
    be2 = env.backend(poll_interval=None)
    got = be2.wait_n(of_type("mephisto_bound_live_update"), 5)
    assert live_update_numbers(got) == list(range(5))

    def lost_disconnected():
        return be2.statuses().get(lost.agent_id) == "disconnect"
    assert wait_until(lost_disconnected, grace + 4, interval=0.2), be2.statuses()
    assert be2.statuses().get(kept.agent_id) == "in task"
    be2.send(backend_packet("client_bound_live_update", kept.agent_id, {"still": "here"}))
    assert kept.recv_until(of_type("client_bound_live_update"))["data"] == {"still": "here"}


# ==========================================================================
# 12. state survives a restart

@pytest.mark.parametrize("how", ["SIGTERM", "SIGKILL"])
def test_state_survives_restart(env, how):
    state = env.tmp_path / "shared-state.db"
    r1 = env.router(state_path=str(state))
    be = env.backend(router=r1, poll_interval=None)
    x = "agent-x-" + uuid.uuid4().hex[:6]
    be.set_status(x, "in task")
    be.send(backend_packet("client_bound_live_update", x, {"kept": "for x"}))
    assert be.statuses().get(x) == "in task"
    be.close()
    assert be.wait_closed(3)
    y = env.browser(router=r1)
    y.alive()
    for i in range(3):
        y.send_packet("mephisto_bound_live_update", {"n": i})
    assert y.served()
    # a submission with a file while the backend is away: the backend will
    # fetch the file from the restarted router
    upload = os.urandom(5000)
    json_ok(y.submit_task_multipart(json.dumps({"answer": 1}),
                                    [("f", "keep.bin", upload, "application/octet-stream")]))
    time.sleep(0.3)
    if how == "SIGTERM":
        assert r1.stop() == 0
    else:
        workers = r1.worker_pids()
        os.killpg(r1.pgid, 9)
        r1.proc.wait(timeout=5)
        assert wait_until(lambda: not [p for p in workers if is_running(p)], 3.0)
    r2 = env.router(state_path=str(state), upload_dir=str(r1.dir / "uploads") + "/")
    be2 = env.backend(router=r2, poll_interval=None)
    got = be2.wait_n(of_type("mephisto_bound_live_update"), 3)
    assert live_update_numbers(got) == [0, 1, 2]
    unit = be2.wait_for(of_type("submit_unit", y.agent_id), what="queued submit_unit")
    assert unit["data"]["answer"] == 1
    fn = unit["data"]["files"][0]["filename"]
    resp = r2.get("/download_file/" + fn)
    assert resp.status_code == 200 and resp.content == upload, (
        "an upload stored before the restart cannot be downloaded: %d" % resp.status_code)
    assert be2.statuses().get(x) == "in task", "status lost in the restart"
    bx = env.browser(router=r2, agent_id=x)
    up = bx.alive()
    assert up["data"] == {"status": "in task"}, short(up)
    p = bx.recv_until(of_type("client_bound_live_update"), what="queued packet after restart")
    assert p["data"] == {"kept": "for x"}
    time.sleep(0.5)
    assert be2.count(of_type("mephisto_bound_live_update")) == 3


# ==========================================================================
# 13. a whole task, as Mephisto and mephisto-task run it

@pytest.mark.parametrize("placement", PLACEMENTS)
def test_full_task(env, placement):
    wb, wa = placement
    r = env.router(start=False)
    raw_config = write_task_config(r)
    r.start()
    be = env.backend(want_worker=wb, poll_interval=0.5)
    b = env.browser(connect=False)
    # the page loads
    assert r.get("/task_index?workerId=w1&assignmentId=a1").content == \
        r.static_files["index.html"]
    assert b.task_config("2.0.4").content == raw_config
    # registration
    details = json_ok(b.request_agent({"worker_name": "w1", "assignment_id": "a1"}))
    agent_id = details["data"]["agent_id"]
    b.agent_id = agent_id
    b.connect(want_worker=wa)
    assert b.alive()["data"] == {"status": "none"}
    be.set_status(agent_id, "in task")
    b.recv_until(lambda p: p["packet_type"] == "update_status" and
                 p["data"].get("status") == "in task")
    for _ in range(3):
        ans = b.heartbeat()
        assert ans["data"]["status"] == "in task"
        assert time.time() * 1000 - ans["data"]["last_mephisto_ping"] < 20000
    assert be.statuses()[agent_id] == "in task"
    # live updates both ways
    for i in range(3):
        b.send_packet("mephisto_bound_live_update", {"turn": i})
        be.send(backend_packet("client_bound_live_update", agent_id, {"reply": i}))
    got = be.wait_n(of_type("mephisto_bound_live_update", agent_id), 3)
    assert [p["data"]["turn"] for p in got] == [0, 1, 2]
    assert [b.recv_until(of_type("client_bound_live_update"))["data"]["reply"]
            for _ in range(3)] == [0, 1, 2]
    # metadata, JSON and multipart, and an error log without error_data
    json_ok(b.submit_metadata({"feedback": "fine"}), {"status": "Submitted metadata"})
    shot = os.urandom(2048)
    json_ok(b.submit_metadata_multipart(json.dumps({"feedback": "shot"}),
                                        [("screenshot", "s.png", shot, "image/png")]),
            {"status": "Submitted metadata"})
    json_ok(b.log_error(), {"status": "Error log sent!"})
    # submission with a file
    upload = b"the worker's recording" * 100
    json_ok(b.submit_task_multipart(json.dumps({"answer": 4}),
                                    [("recording", "rec.wav", upload, "audio/wav")]),
            {"status": "Submitted!"})
    unit = be.wait_for(of_type("submit_unit", agent_id))
    assert unit["data"]["answer"] == 4
    check_file_records(r, unit["data"]["files"], [("recording", "rec.wav", upload, "audio/wav")])
    check_files_by_fields(unit["data"])
    # the backend fetches the upload (remote deployment)
    resp = r.get("/download_file/" + unit["data"]["files"][0]["filename"])
    assert resp.status_code == 200 and resp.content == upload
    metas = be.wait_n(of_type("submit_metadata", agent_id), 2)
    assert without_files(metas[0]["data"]) == {"feedback": "fine"}
    assert metas[1]["data"]["feedback"] == "shot"
    check_file_records(r, metas[1]["data"]["files"], [("screenshot", "s.png", shot, "image/png")])
    err = be.wait_for(of_type("log_error", agent_id))
    assert err["data"] == {}
    time.sleep(1.0)
    counts = {t: be.count(of_type(t)) for t in ("register_agent", "submit_unit",
                                                "submit_metadata", "log_error")}
    assert counts == {"register_agent": 1, "submit_unit": 1, "submit_metadata": 2,
                      "log_error": 1}, counts
    assert be.is_open and b.served()


def test_no_duplicate_json_keys(env):
    """The router sets its timestamps in the packet: the backend's packets
    carry router_*_timestamp: null already, so splicing text without
    replacing gives duplicated keys (JSON parsers then disagree)."""
    env.router()
    be = env.backend(poll_interval=None)
    b = env.browser()
    b.alive()
    b.heartbeat()
    b.send_packet("mephisto_bound_live_update", {"x": 1}, router_incoming_timestamp=None,
                  router_outgoing_timestamp=None)
    be.wait_for(of_type("mephisto_bound_live_update"))
    be.send(backend_packet("client_bound_live_update", b.agent_id, {"y": 1}))
    b.recv_until(of_type("client_bound_live_update"))
    be.statuses()
    json_ok(env.browser(connect=False).request_agent())
    assert not be.duplicate_keys, be.duplicate_keys
    assert not b.duplicate_keys, b.duplicate_keys


def test_request_agent_provider_data_must_be_an_object(env):
    """Mephisto's backend reads provider_data as a dict: anything else is
    refused at the router instead of breaking the backend."""
    r = env.router()
    be = env.backend(poll_interval=None)
    for bad in ("x", 5, [1]):
        resp = post_json(r.url, "/request_agent", {"provider_data": bad})
        json_error(resp, 400)
        assert "provider_data" in resp.json()["error"]
    time.sleep(0.3)
    assert be.count(of_type("register_agent")) == 0
