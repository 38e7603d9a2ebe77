#!/usr/bin/env python3
"""Write the hand-made seed inputs of the fuzz harnesses into
tests/fuzz/corpus/HARNESS/ (fuzz_ipc's come from ipc_seeds.c, which packs
them with the router's own encoders: make fuzz-seeds). Files are only
written, never deleted: inputs kept from crashes stay. The packets and
requests are those of tests/integration (mephisto_fakes.py,
test_protocol.py), as Mephisto's backend and mephisto-task send them."""

import json
import os
import struct
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
NOW = 1764087000.25


def put(harness, name, data):
    d = os.path.join(HERE, "corpus", harness)
    os.makedirs(d, exist_ok=True)
    if isinstance(data, str):
        data = data.encode("utf-8", "surrogateescape")
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


# ---- packets (fuzz_wire, and WebSocket frames of fuzz_http_head) ----

def browser(ptype, subject, data=None, ts=NOW, **extra):
    p = {"packet_type": ptype, "subject_id": subject,
         "data": {} if data is None else data}
    if ts is not None:
        p["client_timestamp"] = ts
    p.update(extra)
    return json.dumps(p)


def backend(ptype, subject, data=None, **extra):
    p = {"packet_type": ptype, "subject_id": subject,
         "data": {} if data is None else data, "client_timestamp": None,
         "router_incoming_timestamp": None, "router_outgoing_timestamp": None,
         "server_timestamp": NOW}
    p.update(extra)
    return json.dumps(p)


PACKETS = {
    "alive_browser": browser("alive", "agent-7"),
    "alive_backend": backend("alive", "mephisto"),
    "heartbeat": browser("heartbeat", "agent-7", {"last_mephisto_ping": NOW}),
    "live_update_to_backend": browser("mephisto_bound_live_update", "agent-7",
                                      {"text": "hi \"there\"\n", "n": [1, 2.5, True, None]}),
    "live_update_to_browser": backend("client_bound_live_update", "agent-7",
                                      {"task_data": {"a": 1}}),
    "update_status": backend("update_status", "agent-7", {"status": "in task"}),
    "request_statuses": backend("request_statuses", "mephisto"),
    "return_statuses": browser("return_statuses", "mephisto", {"agent-7": "in task"}),
    "agent_details": backend("agent_details", "req-1",
                             {"request_id": "req-1", "agent_id": "7", "unit_id": "3"}),
    "agent_details_no_request_id": backend("agent_details", "req-2", {"agent_id": "8"}),
    "log_error": browser("log_error", "agent-7", {"error_type": "x", "text": "boom"}),
    "compact": '{"packet_type":"alive","subject_id":"a"}',
    "data_null": '{"packet_type": "alive", "subject_id": "agent-7", "data": null}',
    "unicode_escape": '{"packet_type": "alive", "subject_id": "\\u00e9\\ud83d\\ude00"}',
    "utf8_raw": '{"packet_type": "alive", "subject_id": "\u00e9\u20ac\U0001f600"}',
    "non_utf8": b'{"packet_type": "alive", "subject_id": "\xff\xc0\xaf\xed\xa0\x80"}',
    "duplicate_key": '{"packet_type": "alive", "subject_id": "a", "subject_id": "b"}',
    "router_stamps": backend("alive", "mephisto", router_incoming_timestamp=1.5),
    "numbers": '{"packet_type": "alive", "subject_id": "a", "n": -0, "m": 1E+2, '
               '"k": -1.5e-3, "big": 9223372036854775807, "huge": 1e308, "neg": -1e-400}',
    "deep": '{"packet_type": "alive", "subject_id": "a", "x": ' + "[" * 70 + "]" * 70 + "}",
    "whitespace": ' \r\n\t{ "subject_id" : "x" , "packet_type" : "alive" } \n',
    "vertical_tab": '{"packet_type": "alive",\v"subject_id": "a"}',
}
BAD = ["not json at all", '{"packet_type": "heartbeat"', "[1, 2, 3]", '"a string"',
       "null", "42", "{}", '{"subject_id": "x", "data": {}}',
       '{"packet_type": 7, "subject_id": "x", "data": {}}',
       '{"packet_type": "bogus_type", "subject_id": "x", "data": {}}',
       '{"packet_type": "mephisto_bound_live_update", "subject_id": "b", "data": "str"}',
       '{"packet_type": "heartbeat", "subject_id": "x", "client_timestamp": "soon"}',
       '{"packet_type": "heartbeat", "subject_id": "x", "client_timestamp": 1e999}',
       '{"packet_type": "update_status", "subject_id": "a", "data": {"status": 5}}',
       '{"packet_type": "mephisto_bound_live_update", "subject_id": "bad\\u0000agent", "data": {}}',
       '{"packet_type": "alive", "subject_id": "a"} trailing']
for name, text in PACKETS.items():
    put("fuzz_wire", name, text)
for i, text in enumerate(BAD):
    put("fuzz_wire", "bad_%02d" % i, text)

# ---- config (fuzz_config) ----

with open(os.path.join(ROOT, "dist", "mephisto-router.conf"), "rb") as f:
    put("fuzz_config", "dist_mephisto_router_conf", f.read())
put("fuzz_config", "every_key", """# every key, as --check-config prints them
port = 3000
listen_address = 0.0.0.0
workers = 0
static_dir = ./static
upload_dir = /tmp/
state_path = ./mephisto-router.db
log_level = info
max_connections = 10000
max_message_bytes = 1048576
max_header_bytes = 8192
ipc_buffer_bytes = 16777216
shutdown_timeout = 5
respawn_max_delay = 10
reconnect_grace = 10
heartbeat_timeout = 15
request_timeout = 30
max_agent_queue = 1000
max_backend_queue = 100000
max_backend_queue_age = 3600
max_body_bytes = 104857600
backend_max_frame_bytes = 1048576
mephisto_task_version = 2.0.4
""")
put("fuzz_config", "suffixes_ipv6_crlf",
    "port=8080\r\nlisten_address = ::\r\nmax_message_bytes = 2M\r\n"
    "max_header_bytes=16k\r\nipc_buffer_bytes = 1G\r\nmax_body_bytes = 10g\r\n"
    "shutdown_timeout = 0.5\r\nheartbeat_timeout = 1e1\r\nlog_level = debug\r\n")
put("fuzz_config", "errors_duplicate", "port = 1\nport = 2\n")
put("fuzz_config", "errors_unknown", "  # comment\n\nnot_a_key = 1\n")
put("fuzz_config", "errors_values",
    "workers = abc\nmax_message_bytes = 1T\nlisten_address = 999.1.1.1\n")
put("fuzz_config", "errors_no_equals", "port 3000\n")
put("fuzz_config", "edge_numbers",
    "port = 0x10\nworkers = 64\nrequest_timeout = 0x1p-3\nreconnect_grace = 86400\n"
    "max_backend_queue_age = 0\nmax_connections = 1e7\nrespawn_max_delay = 0.01\n")
put("fuzz_config", "paths_and_version",
    "static_dir = /var/lib/mephisto router/static = x\nupload_dir = #not a comment\n"
    "state_path = :memory:\nmephisto_task_version = 2.0.4-rc1+local\n"
    "listen_address = ::ffff:127.0.0.1\n")
put("fuzz_config", "non_utf8", b"static_dir = /tmp/\xff\xfe\xc3\x28\nlog_level = warn\n")

# ---- HTTP (fuzz_http_head: whole connections) ----

HOST = "Host: 127.0.0.1:3000\r\n"
UA = "User-Agent: Mozilla/5.0 (X11; Linux x86_64) Firefox/120.0\r\n"


def get(path, extra=""):
    return ("GET %s HTTP/1.1\r\n%s%s%s\r\n" % (path, HOST, UA, extra)).encode()


def post(path, body, ctype="application/json", extra="", length=None):
    if isinstance(body, str):
        body = body.encode()
    head = ("POST %s HTTP/1.1\r\n%sContent-Type: %s\r\nContent-Length: %d\r\n%s\r\n"
            % (path, HOST, ctype, len(body) if length is None else length, extra))
    return head.encode() + body


def multipart_body(fields, files, boundary="----protoTestBoundary7MA4YWxkTrZu0gW"):
    b = boundary.encode()
    out = b""
    for k, v in fields.items():
        out += (b"--" + b + b'\r\nContent-Disposition: form-data; name="' + k.encode()
                + b'"\r\n\r\n' + v.encode() + b"\r\n")
    for field, name, content, mime in files:
        out += (b"--" + b + b'\r\nContent-Disposition: form-data; name="' + field.encode()
                + b'"; filename="' + name + b'"\r\nContent-Type: ' + mime.encode()
                + b"\r\n\r\n" + content + b"\r\n")
    out += b"--" + b + b"--\r\n"
    return out, "multipart/form-data; boundary=" + boundary


def ws_frame(payload, opcode=1, fin=True, mask=b"\x37\xfa\x21\x3d"):
    if isinstance(payload, str):
        payload = payload.encode()
    head = bytes([(0x80 if fin else 0) | opcode])
    n = len(payload)
    if n < 126:
        head += bytes([0x80 | n])
    elif n < 65536:
        head += bytes([0x80 | 126]) + struct.pack(">H", n)
    else:
        head += bytes([0x80 | 127]) + struct.pack(">Q", n)
    return head + mask + bytes(c ^ mask[i % 4] for i, c in enumerate(payload))


UPGRADE = ("GET / HTTP/1.1\r\n" + HOST + "Upgrade: websocket\r\nConnection: Upgrade\r\n"
           "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
           "Origin: http://127.0.0.1:3000\r\n\r\n").encode()
AGENT = "a3f9c2e0-6b1d-4c55-9e77-1f2a3b4c5d6e"

H = "fuzz_http_head"
put(H, "get_is_alive", get("/is_alive"))
put(H, "get_timestamp_keepalive", get("/get_timestamp") + get("/is_alive", "Connection: close\r\n"))
put(H, "get_root_and_task_index", get("/") + get("/task_index") + get("/welcome"))
put(H, "get_static_files", get("/bundle.js") + get("/style.css") + get("/app.mjs")
    + get("/sub/") + get("/noext") + get("/missing.png"))
put(H, "get_task_config_version", get("/task_config.json?mephisto_task_version=2.0.3"))
put(H, "get_download_file", get("/download_file/mr-0123456789abcdef0123456789abcdef")
    + get("/download_file/../index.html"))
put(H, "get_dotdot_encoded", get("/%2e%2e/%2e%2e/etc/passwd") + get("/outside")
    + get("/inside") + get("/sub/../../x"))
put(H, "head_request", "HEAD /is_alive HTTP/1.1\r\n" + HOST + "\r\n")
put(H, "http10_no_host", "GET /is_alive HTTP/1.0\r\n\r\n")
put(H, "absolute_uri", "GET http://127.0.0.1:3000/is_alive HTTP/1.1\r\n" + HOST + "\r\n")
put(H, "unknown_method", "BREW /pot HTTP/1.1\r\n" + HOST + "Content-Length: 0\r\n\r\n")
put(H, "put_method", "PUT /submit_task HTTP/1.1\r\n" + HOST + "Content-Length: 2\r\n\r\n{}")
put(H, "options_star", "OPTIONS * HTTP/1.1\r\n" + HOST + "\r\n")
put(H, "http2_preface", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x12\x04\x00\x00\x00\x00\x00"
    b"\x00\x03\x00\x00\x00\x64\x00\x04\x00\x00\xff\xff\x00\x05\x00\x00\x40\x00")
put(H, "h2c_upgrade", "GET / HTTP/1.1\r\n" + HOST + "Connection: Upgrade, HTTP2-Settings\r\n"
    "Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n")
put(H, "huge_header_over_8k", get("/is_alive", "X-Big: " + "a" * 9000 + "\r\n"))
put(H, "large_header_under_8k", get("/is_alive", "Cookie: " + "b" * 6000 + "\r\n"))
put(H, "many_headers", get("/is_alive", "".join("X-H%d: v\r\n" % i for i in range(150))))
put(H, "non_utf8_uri_and_header", b"GET /\xff\xfe\xc0\xaf.js?q=\xe9 HTTP/1.1\r\n" + HOST.encode()
    + b"X-Name: \xc3\x28\xa0\xa1\r\n\r\n")
put(H, "bare_lf", "GET /is_alive HTTP/1.1\nHost: x\n\n")
put(H, "post_request_agent", post("/request_agent", json.dumps(
    {"provider_data": {"worker_name": "w-1", "assignment_id": "as-1"},
     "client_timestamp": NOW})))
put(H, "post_submit_onboarding", post("/submit_onboarding", json.dumps(
    {"provider_data": {"USED_AGENT_ID": AGENT, "onboarding_data": {"ok": True}},
     "client_timestamp": str(NOW)})))
put(H, "post_submit_task_json", post("/submit_task", json.dumps(
    {"USED_AGENT_ID": AGENT, "final_data": {"answer": 42, "list": [1, "two"]},
     "client_timestamp": NOW})))
put(H, "post_submit_task_string", post("/submit_task", json.dumps(
    {"USED_AGENT_ID": AGENT, "final_string_data": json.dumps({"a": 1})})))
put(H, "post_submit_metadata", post("/submit_metadata", json.dumps(
    {"USED_AGENT_ID": AGENT, "metadata": {"note": "n"}})))
put(H, "post_log_error", post("/log_error", json.dumps(
    {"USED_AGENT_ID": AGENT, "error_data": ["stack", 1]})))
put(H, "post_bad_json", post("/submit_task", '{"USED_AGENT_ID": "x", "final_data": {'))
put(H, "post_chunked_411", "POST /submit_task HTTP/1.1\r\n" + HOST
    + "Transfer-Encoding: chunked\r\nContent-Type: application/json\r\n\r\n2\r\n{}\r\n0\r\n\r\n")
put(H, "post_bad_content_length",
    post("/log_error", "{}").replace(b"Content-Length: 2", b"Content-Length: 2x"))
put(H, "post_413", post("/submit_task", "{}", length=200 * 1024 * 1024))
put(H, "post_unknown_path", post("/nope", "{}"))
put(H, "post_then_get_pipelined", post("/log_error", "{}") + get("/is_alive"))
body, ctype = multipart_body(
    {"USED_AGENT_ID": AGENT, "final_string_data": json.dumps({"a": 1}),
     "client_timestamp": str(NOW)},
    [("file", b"photo.png", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(64)), "image/png"),
     ("file", b"notes.txt", b"line one\r\n--not-a-boundary\r\n", "text/plain"),
     ("other", "\u00e9t\u00e9.csv".encode(), b"a,b\n1,2\n", "text/csv")])
put(H, "post_multipart_files", post("/submit_task", body, ctype))
body, ctype = multipart_body({"USED_AGENT_ID": AGENT, "metadata": "{\"m\": 1}"},
                             [("f", b"x.bin", b"\x00\x01\x02", "application/octet-stream")],
                             boundary="b")
put(H, "post_multipart_metadata", post("/submit_metadata", body, ctype))
put(H, "ws_alive_heartbeat_update", UPGRADE
    + ws_frame(browser("alive", AGENT)) + ws_frame(browser("heartbeat", AGENT))
    + ws_frame(browser("mephisto_bound_live_update", AGENT, {"x": 1}))
    + ws_frame(b"\x03\xe8", opcode=8))
put(H, "ws_backend", UPGRADE + ws_frame(backend("alive", "mephisto"))
    + ws_frame(backend("client_bound_live_update", AGENT, {"t": 1}))
    + ws_frame(backend("request_statuses", "mephisto")))
big = browser("mephisto_bound_live_update", AGENT, {"blob": "x" * 3000})
put(H, "ws_fragmented_and_long", UPGRADE
    + ws_frame(big[:1000], fin=False) + ws_frame(b"", opcode=9)
    + ws_frame(big[1000:], opcode=0) + ws_frame(big))
put(H, "ws_bad_frames", UPGRADE + ws_frame("not json at all") + ws_frame("[1]")
    + ws_frame(b"\xff\xfe", opcode=1) + ws_frame(b"\x00\x01", opcode=2))
put(H, "ws_unmasked", UPGRADE + b"\x81\x05hello")
put(H, "ws_bad_version", UPGRADE.replace(b"Version: 13", b"Version: 8"))
put(H, "pipelined_after_static_file_403", get("/") + get("/is_alive"))

# ---- multipart bodies (fuzz_multipart: the body of POST /submit_task) ----

M = "fuzz_multipart"
B = "----protoTestBoundary7MA4YWxkTrZu0gW"
body, _ = multipart_body({"USED_AGENT_ID": AGENT, "final_string_data": json.dumps({"a": 1})},
                         [], B)
put(M, "fields_only", body)
body, _ = multipart_body({"USED_AGENT_ID": AGENT, "final_string_data": json.dumps({"a": 1}),
                          "client_timestamp": str(NOW)},
                         [("file", b"photo.png", b"\x89PNG\r\n\x1a\n" + bytes(range(200)), "image/png"),
                          ("file", b"b.txt", b"two\r\n", "text/plain")], B)
put(M, "fields_and_files", body)
body, _ = multipart_body({}, [("f", b"first.bin", b"\x00" * 40, "application/octet-stream")], B)
extra, _ = multipart_body({"USED_AGENT_ID": AGENT, "final_string_data": "{}"}, [], B)
put(M, "file_first", body.replace(b"--" + B.encode() + b"--\r\n", b"") + extra)
body, _ = multipart_body({"USED_AGENT_ID": AGENT, "final_string_data": ""}, [], B)
put(M, "empty_final_string_data", body)
body, _ = multipart_body({"USED_AGENT_ID": AGENT, "final_string_data": "{}"},
                         [("f", b"cut.txt", b"abc", "text/plain")], B)
put(M, "no_closing_boundary", body[:-len(B) - 6])
body, _ = multipart_body({"USED_AGENT_ID": AGENT, "final_string_data": "{}"},
                         [("f\xe9", b"\xff\xfe\xc3(.txt", b"\xff" * 20, "text/plain")], "b")
put(M, "non_utf8_names_short_boundary", body)
put(M, "lf_only", body.replace(b"\r\n", b"\n"))
body, _ = multipart_body({"USED_AGENT_ID": AGENT, "metadata": "x", "unknown_field": "y" * 300},
                         [("f%d" % i, b"n%d.txt" % i, b"%d" % i, "text/plain") for i in range(8)], B)
put(M, "many_files_unknown_field", body)
put(M, "preamble_and_epilogue", b"preamble\r\n" + extra + b"epilogue\r\n")
print("seeds written under", os.path.join(HERE, "corpus"), file=sys.stderr)
