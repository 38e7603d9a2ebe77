"""1. Malformed and idle connections (issue 9).

Each test sends one kind of abuse to the real router over 127.0.0.1, then
checks that no worker died (the worker-death guard, also inside the test so
an xfail covers it), that every worker still answers a legitimate request,
and, where HTTP has an answer for the abuse, that the client got that 4xx
instead of a silent close."""

import socket
import struct
import time

import pytest

from faultlib import assert_still_serving, raw_exchange

# lws closes a connection that does not complete its request within its
# own timeouts (5-10 s); holding a connection this long runs past them.
IDLE_HOLD = 13.0


def request(line, headers=b"", body=b""):
    return (line + b"\r\nHost: 127.0.0.1\r\n" + headers + b"Connection: close\r\n\r\n"
            + body)


@pytest.mark.parametrize("method", [b"FOO", b"PROPFIND", b"BREW"])
def test_unknown_method_gets_an_error_answer(env, method):
    """`FOO / HTTP/1.1`: an HTTP error (400, 405 or 501), not a silent
    close, and the worker lives."""
    r = env.router()
    results = []
    for _ in range(4):  # both workers, most likely
        status, raw, note = raw_exchange(r.port, request(method + b" / HTTP/1.1"))
        results.append((status, raw[:120], note))
    assert_still_serving(r)
    for status, raw, note in results:
        assert status in (400, 405, 501), (
            "%s / HTTP/1.1 was answered %r (%s): %r" % (method.decode(), status, note, raw))


def test_header_block_over_max_header_bytes_is_431(env):
    r = env.router(max_header_bytes="8K")
    big = b"".join(b"X-Filler-%03d: %s\r\n" % (i, b"a" * 200) for i in range(60))  # ~13 KB
    results = [raw_exchange(r.port, request(b"GET /is_alive HTTP/1.1", big))
               for _ in range(3)]
    # one header over the limit on its own
    results.append(raw_exchange(r.port, request(b"GET /is_alive HTTP/1.1",
                                                b"X-Huge: " + b"b" * 12000 + b"\r\n")))
    assert_still_serving(r)
    for status, raw, note in results:
        assert status == 431, "oversized header block answered %r (%s): %r" % (
            status, note, raw[:200])


def test_url_of_20_kb_is_414(env):
    r = env.router()
    url = b"/is_alive?pad=" + b"u" * 20000
    results = [raw_exchange(r.port, request(b"GET " + url + b" HTTP/1.1"))
               for _ in range(3)]
    assert_still_serving(r)
    for status, raw, note in results:
        assert status == 414, "a 20 KB URL was answered %r (%s): %r" % (
            status, note, raw[:200])


def test_http2_preface(env):
    """An HTTP/2 prior-knowledge client: the router speaks HTTP/1.1 only; it
    may answer an error or close, but must keep serving."""
    r = env.router()
    preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
    settings = struct.pack("!I", 0)[1:] + b"\x04\x00" + struct.pack("!I", 0)
    results = [raw_exchange(r.port, preface + settings, timeout=3) for _ in range(3)]
    assert_still_serving(r)
    for status, raw, note in results:
        assert status is None or 400 <= status < 600, (status, note, raw[:200])


def client_hello():
    """A TLS 1.2 ClientHello record (no extensions worth parsing)."""
    body = (b"\x03\x03" + bytes(range(32)) + b"\x00" + b"\x00\x04\x13\x01\x00\x2f"
            + b"\x01\x00" + b"\x00\x00")
    hs = b"\x01" + len(body).to_bytes(3, "big") + body
    return b"\x16\x03\x01" + len(hs).to_bytes(2, "big") + hs


def test_tls_client_hello(env):
    r = env.router()
    results = [raw_exchange(r.port, client_hello(), timeout=3) for _ in range(3)]
    assert_still_serving(r)
    for status, raw, note in results:
        assert status is None or 400 <= status < 600, (status, note, raw[:200])


def test_silent_connection_held_past_timeouts(env):
    """A TCP connection that never sends a byte, held past lws's timeouts
    (observed: a worker SIGSEGV about 10 s later)."""
    r = env.router()
    socks = []
    try:
        for _ in range(4):
            socks.append(socket.create_connection(("127.0.0.1", r.port), timeout=5))
        time.sleep(IDLE_HOLD)
        assert_still_serving(r)
    finally:
        for s in socks:
            s.close()
    assert_still_serving(r)


def test_half_request_line_then_silence(env):
    """Half a request line, then nothing, held past the timeouts; then a
    half header block the same way."""
    r = env.router()
    socks = []
    try:
        for part in (b"GET /is_al", b"POST /submit_task HTTP/1.1\r\nHost: x\r\nContent-Le"):
            for _ in range(2):
                s = socket.create_connection(("127.0.0.1", r.port), timeout=5)
                s.sendall(part)
                socks.append(s)
        time.sleep(IDLE_HOLD)
        assert_still_serving(r)
    finally:
        for s in socks:
            s.close()
    assert_still_serving(r)


def test_connection_reset_mid_request(env):
    """TCP resets in every phase of a request: inside the request line, the
    headers, a JSON body, a multipart upload, a WebSocket upgrade."""
    r = env.router()
    be = env.backend()
    body = b'{"USED_AGENT_ID": "agent-rst", "final_data": {"pad": "' + b"p" * 50000
    mp_head = (b"--bnd\r\nContent-Disposition: form-data; name=\"USED_AGENT_ID\"\r\n\r\n"
               b"agent-rst\r\n--bnd\r\nContent-Disposition: form-data; name=\"f\"; "
               b"filename=\"a.bin\"\r\nContent-Type: application/octet-stream\r\n\r\n"
               + b"z" * 60000)
    cases = [
        b"GET /is_ali",
        b"GET /is_alive HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Half: abc",
        b"POST /submit_task HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: 100000\r\n\r\n" + body,
        b"POST /submit_task HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; "
        b"boundary=bnd\r\nContent-Length: 200000\r\n\r\n" + mp_head,
        b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSoc",
    ]
    for _ in range(2):
        for data in cases:
            raw_exchange(r.port, data, hold=0.1, rst=True)
    time.sleep(0.5)
    assert_still_serving(r)
    assert be.is_open and be.ping_ok(), "the backend channel was broken"
    b = env.browser()
    b.alive()
    assert b.served()
