"""2. Bytes that are not UTF-8, and control characters, everywhere a
client can put them (issue 9): the task-version query, multipart field and
file names and values, JSON POST bodies, WebSocket text frames, agent ids.

The rule each test checks: the client gets a 4xx, or the backend gets a
correct packet (valid JSON text, every field there); never a crash, a
silently dropped field, or bytes that break the backend's channel (the
fake backend, like Mephisto's websockets client, closes 1007 on a text
frame that is not UTF-8)."""

import json
import time
import uuid

import pytest

from faultlib import (assert_still_serving, multipart, post_bytes,
                      raw_exchange, session)
from mephisto_fakes import of_type


def new_agent():
    return "agent-" + uuid.uuid4().hex[:10]


def backend_ok(be):
    assert be.is_open and not be.closed, (
        "the backend's channel was closed (code %s)" % be.close_code)
    assert be.ping_ok(), "the backend's channel does not answer a ping"


def write_task_config(r):
    (r.static_dir / "task_config.json").write_text(
        json.dumps({"task_title": "faults", "block_mode": "static"}))


# --------------------------------------------------------------------------
# the task-version query

@pytest.mark.parametrize("query", [
    pytest.param(b"%ff", id="pct-ff"),
    pytest.param(b"%c3%28", id="pct-bad-2byte"),
    pytest.param(b"%ff%fe%fd" * 30, id="long-pct"),
    pytest.param(b"\xff\xfe", id="raw-bytes"),
    pytest.param(b"%00abc", id="pct-nul"),
    pytest.param(b"%e2%80%ae1.0", id="rtl-override"),
])
def test_task_config_version_not_utf8(env, query):
    """GET /task_config.json?mephisto_task_version=<not UTF-8> (observed:
    the worker exits 'out of memory'): the file or a 400, the backend gets
    at most one valid version warning, and nothing dies."""
    r = env.router()
    write_task_config(r)
    be = env.backend()
    results = []
    for _ in range(3):
        status, raw, note = raw_exchange(
            r.port, b"GET /task_config.json?mephisto_task_version=" + query +
            b" HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        results.append((status, note, raw[:200]))
    assert_still_serving(r)
    for status, note, raw in results:
        assert status in (200, 400), (status, note, raw)
    backend_ok(be)
    # the warning path still works for a plain version
    with session() as s:
        assert s.get(r.url + "/task_config.json",
                     params={"mephisto_task_version": "9.9.9-faults"},
                     headers={"Connection": "close"}, timeout=5).status_code == 200
    be.wait_for(lambda p: p["packet_type"] == "log_error" and
                "9.9.9-faults" in json.dumps(p["data"]), what="version warning")
    backend_ok(be)


# --------------------------------------------------------------------------
# multipart

MP_CASES = {
    # name: (parts before the required ones, parts after, what a 200 must show)
    "file-name-latin1": ([], [(b"doc", b"r\xe9sum\xe9.txt", b"hello file")]),
    "file-name-invalid": ([], [(b"doc", b"bad\xff\xfe.txt", b"hello file")]),
    "file-field-name": ([], [(b"d\xffc", b"a.txt", b"hello file")]),
    "plain-field-name-first": ([(b"x\xff\xfey", None, b"v")], []),
    "plain-field-name-last": ([], [(b"x\xff\xfey", None, b"v")]),
    "overlong-slash-name": ([], [(b"doc", b"\xc0\xaf\xc0\xaf.txt", b"hello file")]),
}


@pytest.mark.parametrize("case", sorted(MP_CASES))
def test_multipart_names_not_utf8(env, case):
    """A multipart submit_task whose field or file names are not UTF-8
    (observed: a use-after-free and silently dropped fields): the client
    gets a 400, or the backend gets a correct submit_unit: final data
    intact, and every file part reported with its field and its size."""
    r = env.router()
    be = env.backend()
    agent = new_agent()
    before, after = MP_CASES[case]
    required = [(b"USED_AGENT_ID", None, agent.encode()),
                (b"final_string_data", None, b'{"answer": 42}'),
                (b"client_timestamp", None, b"1700000000.5")]
    parts = before + required + after
    body, ctype = multipart(parts)
    resp = post_bytes(r, "/submit_task", body, ctype)
    files_sent = [p for p in parts if p[1] is not None]
    if resp.status_code == 200:
        unit = be.wait_for(of_type("submit_unit", agent), what="submit_unit")
        data = unit["data"]
        assert data.get("answer") == 42, "final data lost: %s" % data
        got = data.get("files", [])
        assert len(got) == len(files_sent), (
            "%d file parts sent, %d reported: %s" % (len(files_sent), len(got), got))
        for rec, (_, _, content) in zip(got, files_sent):
            assert rec.get("size") == len(content), rec
            assert isinstance(rec.get("fieldname"), str) and rec["fieldname"], rec
            assert isinstance(rec.get("originalname"), str), rec
            dl = r.get("/download_file/" + rec["filename"])
            assert dl.status_code == 200 and dl.content == content
    else:
        assert resp.status_code == 400, (resp.status_code, resp.text[:200])
        assert "error" in resp.json()
        assert not be.received(of_type("submit_unit", agent)), \
            "a 400 submission reached the backend"
    assert_still_serving(r)
    backend_ok(be)
    # the same worker still takes a correct upload
    body, ctype = multipart(required[:1] + [(b"final_string_data", None, b'{"ok": 1}'),
                                            (b"f", b"ok.txt", b"fine")])
    assert post_bytes(r, "/submit_task", body, ctype).status_code == 200


@pytest.mark.parametrize("value", ["final_string_data", "USED_AGENT_ID", "metadata"])
def test_multipart_values_not_utf8(env, value):
    """Field values that are not UTF-8: 400, or a valid packet."""
    r = env.router()
    be = env.backend()
    agent = new_agent()
    fields = {b"USED_AGENT_ID": agent.encode(),
              b"final_string_data": b'{"answer": "ok"}',
              b"metadata": b'{"m": 1}',
              b"client_timestamp": b"1700000000.5"}
    fields[value.encode()] = (b'{"answer": "caf\xe9"}' if value != "USED_AGENT_ID"
                              else b"agent-\xff\xfe")
    path = "/submit_metadata" if value == "metadata" else "/submit_task"
    if value == "metadata":
        del fields[b"final_string_data"]
    body, ctype = multipart([(k, None, v) for k, v in fields.items()])
    resp = post_bytes(r, path, body, ctype)
    assert resp.status_code in (200, 400), (resp.status_code, resp.text[:200])
    if resp.status_code == 200:
        want = "submit_metadata" if value == "metadata" else "submit_unit"
        be.wait_for(of_type(want), what=want)
    time.sleep(0.3)
    assert_still_serving(r)
    backend_ok(be)


# --------------------------------------------------------------------------
# JSON POST bodies

BAD_UTF8 = [b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\xc0\xaf", b"\xf8\x88\x80\x80\x80",
            b"\xe2\x82"]


@pytest.mark.parametrize("path,template", [
    ("/submit_task", b'{"USED_AGENT_ID": "%A", "final_data": {"t": "x%Bx"}, '
                     b'"client_timestamp": 1700000000.5}'),
    ("/submit_task", b'{"USED_AGENT_ID": "%A", "final_data": {"k%B": 1}}'),
    ("/submit_metadata", b'{"USED_AGENT_ID": "%A", "metadata": {"t": "%B"}}'),
    ("/log_error", b'{"USED_AGENT_ID": "%A", "error_data": {"t": "%B"}}'),
    ("/request_agent", b'{"provider_data": {"worker_name": "%B"}, '
                       b'"client_timestamp": 1700000000.5}'),
    ("/submit_task", b'{"USED_AGENT_ID": "%A%B", "final_data": {}}'),
], ids=["submit-value", "submit-key", "metadata", "log-error", "request-agent",
        "agent-id"])
def test_json_body_not_utf8(env, path, template):
    """A JSON body with bytes that are not UTF-8: 400 (JSON text is
    UTF-8), or a packet the backend can read; the channel stays up."""
    r = env.router()
    be = env.backend(answer=True)
    statuses = []
    for bad in BAD_UTF8:
        agent = new_agent()
        body = template.replace(b"%A", agent.encode()).replace(b"%B", bad)
        resp = post_bytes(r, path, body, "application/json")
        statuses.append(resp.status_code)
    time.sleep(0.5)
    assert_still_serving(r)
    backend_ok(be)
    for st in statuses:
        assert st in (200, 400), statuses


# --------------------------------------------------------------------------
# WebSocket text frames

def test_ws_text_frame_not_utf8_closes_1007(env):
    """lws validates UTF-8 (LWS_SERVER_OPTION_VALIDATE_UTF8): a text frame
    that is not UTF-8 closes its connection with 1007, others are not
    touched; a valid character split across fragments is accepted."""
    r = env.router()
    be = env.backend()
    others = {s: env.browser(want_worker=s) for s in (1, 2)}
    for b in others.values():
        b.alive()
    codes = []
    for slot in (1, 2):
        for bad in BAD_UTF8[:4]:
            c = env.raw(slot)
            c.send_text(b'{"packet_type": "alive", "subject_id": "agent-' + bad
                        + b'", "data": {}}')
            codes.append(c.wait_close_code(5))
    # a 3-byte character cut between two fragments is valid UTF-8 overall
    ok = env.raw(1)
    agent = new_agent()
    text = ('{"packet_type": "alive", "subject_id": "%s", "data": {"n": "\u20ac"}}'
            % agent).encode()
    cut = text.index(b"\xe2\x82\xac") + 1
    ok.send_frame(0x1, text[:cut], fin=False)
    ok.send_frame(0x0, text[cut:], fin=True)
    up = ok.recv_json(5)
    assert up["packet_type"] == "update_status" and up["subject_id"] == agent, up
    assert_still_serving(r)
    for b in others.values():
        assert b.served()
    backend_ok(be)
    assert codes == [1007] * len(codes), "close codes: %s" % codes


# --------------------------------------------------------------------------
# agent ids with control characters

FORGED = ("\n2026-01-01T00:00:00.000Z error supervisor: forged line from an "
          "agent id")
CONTROL_IDS = ["agent\nnewline" + FORGED, "agent\x1b[31mred\x1b[0m",
               "agent\ttab\rcr", "agent\u2028ls\u2029ps", "agent\x7fdel\x08bs",
               "agent\u202eevil", "agent\x01\x02\x1f"]


def test_agent_ids_with_control_characters(env):
    """Agent ids holding newlines, escape sequences, bidi overrides, other
    control characters (valid JSON strings, which Mephisto accepts):
    every packet carries the id exactly, statuses list it, and the router's
    log stays one line per event (an id cannot forge or colour log lines)."""
    r = env.router(log_level="debug")
    be = env.backend()
    browsers = []
    for aid in CONTROL_IDS:
        b = env.browser(agent_id=aid)
        up = b.alive()
        assert up["subject_id"] == aid and up["data"] == {"status": "none"}, up
        b.send_packet("mephisto_bound_live_update", {"id": aid})
        got = be.wait_for(lambda p, aid=aid: p["packet_type"] ==
                          "mephisto_bound_live_update" and p["data"].get("id") == aid)
        assert got["subject_id"] == aid
        be.send({"packet_type": "client_bound_live_update", "subject_id": aid,
                 "data": {"back": aid}, "client_timestamp": None,
                 "server_timestamp": time.time()})
        back = b.recv_until(of_type("client_bound_live_update"))
        assert back["subject_id"] == aid and back["data"] == {"back": aid}
        assert b.heartbeat()["data"].get("status") == "none"
        browsers.append(b)
    st = be.statuses()
    for aid in CONTROL_IDS:
        assert st.get(aid) == "none", "return_statuses lacks %r: %s" % (aid, st)
    for b in browsers:  # a submission ends the agent's state
        resp = b.submit_task({"final": b.agent_id})
        assert resp.status_code == 200, resp.text
        unit = be.wait_for(of_type("submit_unit", b.agent_id))
        assert unit["data"].get("final") == b.agent_id
    backend_ok(be)
    assert_still_serving(r)
    log = r.log()
    assert not [line for line in log.splitlines() if line.startswith("2026-01-01")], (
        "an agent id wrote its own line into the log")
    assert not [c for c in "\x1b\x01\x7f\u202e" if c in log], (
        "raw control characters of agent ids in the log")


def test_agent_id_with_nul(env):
    """An id holding NUL cannot be a C string: the packet or request is
    refused (dropped and logged, or 400), never cut at the NUL into
    another agent's id."""
    r = env.router()
    be = env.backend()
    aid = "agent\x00nul"
    b = env.browser(agent_id=aid)
    b.send_packet("alive")
    b.send_packet("mephisto_bound_live_update", {"nul": 1})
    got = b.collect(1.5)
    resp = b.submit_task({"final": "nul"})
    assert resp.status_code in (200, 400), resp.status_code
    time.sleep(0.5)
    for p in got:
        assert p.get("subject_id") == aid, "a packet for a cut id: %s" % p
    for p in be.received():
        assert p.get("subject_id") not in ("agent", "agentnul"), (
            "the backend got a packet for a cut id: %s" % p)
        if p.get("packet_type") in ("submit_unit", "mephisto_bound_live_update"):
            assert p.get("subject_id") == aid, p
    assert_still_serving(r)
    backend_ok(be)
    # the socket still works for a plain id
    assert b.heartbeat(subject_id="agent-plain-after-nul")
