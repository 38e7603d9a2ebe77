"""Helpers of the fault and abuse suite: raw sockets, a raw WebSocket
client that can stop reading, CPU shares over a window, and the checks
every fault test ends with. Everything targets 127.0.0.1 and every loop is
bounded in time and count."""

import base64
import contextlib
import json
import os
import socket
import struct
import threading
import time

import requests

from conftest import HTTP_TIMEOUT, miss_pause
from mephisto_fakes import MEPHISTO, backend_packet
from proclib import cpu_seconds, rss_mb  # noqa: F401  (tests/proclib.py)


# --------------------------------------------------------------------------
# /proc (the readers are tests/proclib.py's, on sys.path through the
# integration conftest that conftest.py loads; rss_mb is re-exported here)

class CpuWindow:
    """CPU share (of one core) of some pids over a window of wall time."""

    def __init__(self, pids):
        self.pids = list(pids)
        self.t0 = time.monotonic()
        self.c0 = {p: cpu_seconds(p) or 0.0 for p in self.pids}

    def shares(self):
        dt = max(1e-3, time.monotonic() - self.t0)
        return {p: ((cpu_seconds(p) or self.c0[p]) - self.c0[p]) / dt
                for p in self.pids}


# --------------------------------------------------------------------------
# HTTP

def session():
    s = requests.Session()
    s.trust_env = False
    return s


def is_alive_on_each_worker(r, slots=(1, 2), max_attempts=60, burst=4):
    """GET /is_alive on new connections until each slot answered 200. New
    connections land on whichever worker is free first, and an idle worker
    may win every time on a loaded machine: each attempt opens `burst`
    connections at once (a worker takes one per wakeup, so the others go to
    the next free one). Returns {slot: status}."""
    import concurrent.futures
    seen = {}
    deadline = time.monotonic() + 10

    def one(_):
        try:
            return r.get("/is_alive", timeout=3)
        except requests.RequestException as e:
            return e
    with concurrent.futures.ThreadPoolExecutor(burst) as pool:
        for attempt in range(max_attempts):
            for resp in pool.map(one, range(burst)):
                if isinstance(resp, Exception):
                    seen.setdefault("errors", []).append(repr(resp))
                    continue
                w = resp.headers.get("X-Router-Worker")
                if w is not None and w.isdigit():
                    seen[int(w)] = resp.status_code
            if all(s in seen for s in slots) or time.monotonic() > deadline:
                break
            miss_pause(attempt)
    return seen


def assert_still_serving(r, slots=(1, 2)):
    """No worker died that the test did not kill, and every worker still
    answers a legitimate request."""
    r.check_workers()
    seen = is_alive_on_each_worker(r, slots)
    for s in slots:
        assert seen.get(s) == 200, (
            "worker %d did not answer /is_alive with 200 afterwards: %s\n%s"
            % (s, seen, r.log_tail(30)))
    assert r.proc.poll() is None, "the supervisor exited: %s" % r.proc.returncode


def raw_exchange(port, data, timeout=5.0, hold=None, rst=False):
    """Send raw bytes (tolerating a peer that stops reading or closes) and
    read what comes back until the peer closes, a complete answer arrived,
    or timeout. Returns (status or None, raw answer bytes, note)."""
    chunks = []
    note = ""
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    try:
        try:
            if data:
                s.sendall(data)
        except (BrokenPipeError, ConnectionResetError, socket.timeout) as e:
            note = "send: %r" % e
        if hold:
            time.sleep(hold)
        if rst:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            return None, b"", "reset"
        deadline = time.monotonic() + timeout
        for _ in range(10000):
            left = deadline - time.monotonic()
            if left <= 0:
                note += " timeout"
                break
            s.settimeout(left)
            try:
                b = s.recv(65536)
            except socket.timeout:
                note += " recv timeout"
                break
            except ConnectionResetError as e:
                note += " recv: %r" % e
                break
            if not b:
                note += " closed"
                break
            chunks.append(b)
            if complete_response(b"".join(chunks)):
                break
    finally:
        s.close()
    raw = b"".join(chunks)
    status = None
    first = raw.split(b"\r\n", 1)[0]
    if first.startswith(b"HTTP/"):
        parts = first.split()
        if len(parts) >= 2 and parts[1].isdigit():
            status = int(parts[1])
    return status, raw, note


def complete_response(raw):
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


def multipart(parts, boundary=b"----faultsBoundary9f8e7d6c5b4a"):
    """parts: [(name bytes, filename bytes or None, content bytes)].
    Returns (body, content type)."""
    out = b""
    for name, filename, content in parts:
        out += b"--" + boundary + b'\r\nContent-Disposition: form-data; name="' + name + b'"'
        if filename is not None:
            out += b'; filename="' + filename + b'"\r\nContent-Type: text/plain'
        out += b"\r\n\r\n" + content + b"\r\n"
    out += b"--" + boundary + b"--\r\n"
    return out, "multipart/form-data; boundary=" + boundary.decode()


def post_bytes(r, path, body, content_type, timeout=HTTP_TIMEOUT):
    with session() as s:
        return s.post(r.url + path, data=body, timeout=timeout,
                      headers={"Content-Type": content_type, "Connection": "close"})


# --------------------------------------------------------------------------
# a raw WebSocket client

class WSClosed(Exception):
    pass


class RawWS:
    """A WebSocket client on a plain socket: sends any frame (invalid UTF-8
    included), can stop reading for as long as a test wants (with a small
    SO_RCVBUF the kernel holds little for it), answers pings while it reads,
    and records the close code it got. Not thread-safe."""

    def __init__(self, port, rcvbuf=None, timeout=5.0):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(timeout)
        self.sock.connect(("127.0.0.1", port))
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall(("GET / HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n"
                           "Upgrade: websocket\r\nConnection: Upgrade\r\n"
                           "Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n\r\n"
                           % (port, key)).encode())
        buf = b""
        deadline = time.monotonic() + timeout
        while b"\r\n\r\n" not in buf:
            if time.monotonic() > deadline:
                raise AssertionError("no WebSocket upgrade answer: %r" % buf[:200])
            b = self.sock.recv(4096)
            if not b:
                raise AssertionError("closed during the upgrade: %r" % buf[:200])
            buf += b
        head, _, self.buf = buf.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        assert " 101 " in lines[0] + " ", "upgrade refused: %s" % lines[0]
        self.worker = None
        for line in lines[1:]:
            k, _, v = line.partition(":")
            if k.strip().lower() == "x-router-worker" and v.strip().isdigit():
                self.worker = int(v.strip())
        self.close_code = None
        self.closed = False
        self.frag = None  # (opcode, bytes) of a fragmented message

    # -- sending
    def send_frame(self, opcode, payload, fin=True):
        b0 = (0x80 if fin else 0) | opcode
        n = len(payload)
        if n < 126:
            head = struct.pack("!BB", b0, 0x80 | n)
        elif n < 65536:
            head = struct.pack("!BBH", b0, 0x80 | 126, n)
        else:
            head = struct.pack("!BBQ", b0, 0x80 | 127, n)
        mask = os.urandom(4)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload)) \
            if n < 4096 else _mask_fast(payload, mask)
        self.sock.sendall(head + mask + masked)

    def send_text(self, data):
        if isinstance(data, str):
            data = data.encode()
        self.send_frame(0x1, data)

    def send_json(self, obj):
        self.send_text(json.dumps(obj))

    # -- receiving
    def _fill(self, need, deadline):
        while len(self.buf) < need:
            left = deadline - time.monotonic()
            if left <= 0:
                raise socket.timeout("frame incomplete")
            self.sock.settimeout(left)
            b = self.sock.recv(1 << 20)
            if not b:
                self.closed = True
                raise WSClosed("TCP closed")
            self.buf += b

    def _frame(self, deadline):
        self._fill(2, deadline)
        b0, b1 = self.buf[0], self.buf[1]
        n = b1 & 0x7F
        off = 2
        if n == 126:
            self._fill(4, deadline)
            n = struct.unpack("!H", self.buf[2:4])[0]
            off = 4
        elif n == 127:
            self._fill(10, deadline)
            n = struct.unpack("!Q", self.buf[2:10])[0]
            off = 10
        if b1 & 0x80:
            off += 4  # a server never masks; tolerate it anyway
        self._fill(off + n, deadline)
        payload = self.buf[off:off + n]
        if b1 & 0x80:
            payload = _mask_fast(payload, self.buf[off - 4:off])
        self.buf = self.buf[off + n:]
        return bool(b0 & 0x80), b0 & 0x0F, payload

    def recv_message(self, timeout=5.0):
        """The next text or binary message (bytes); raises socket.timeout,
        or WSClosed once a close frame or the end of TCP arrived."""
        deadline = time.monotonic() + timeout
        for _ in range(1000000):
            try:
                fin, op, payload = self._frame(deadline)
            except (ConnectionResetError, BrokenPipeError) as e:
                self.closed = True
                raise WSClosed(repr(e))
            if op == 0x8:
                self.close_code = (struct.unpack("!H", payload[:2])[0]
                                   if len(payload) >= 2 else 1005)
                self.closed = True
                with contextlib.suppress(OSError):
                    self.send_frame(0x8, payload[:2])
                raise WSClosed("close %s" % self.close_code)
            if op == 0x9:
                with contextlib.suppress(OSError):
                    self.send_frame(0xA, payload)
                continue
            if op == 0xA:
                continue
            if op == 0x0:
                if self.frag is None:
                    continue
                self.frag = (self.frag[0], self.frag[1] + payload)
                if fin:
                    data, self.frag = self.frag[1], None
                    return data
                continue
            if not fin:
                self.frag = (op, payload)
                continue
            return payload
        raise AssertionError("unreachable")

    def recv_json(self, timeout=5.0):
        return json.loads(self.recv_message(timeout))

    def recv_all(self, idle=1.0, limit=60.0, max_messages=1000000):
        """Read until nothing came for idle seconds, the connection closed,
        or limit seconds passed. Returns the messages (parsed JSON)."""
        out = []
        deadline = time.monotonic() + limit
        for _ in range(max_messages):
            left = deadline - time.monotonic()
            if left <= 0:
                break
            try:
                out.append(json.loads(self.recv_message(min(idle, left))))
            except (socket.timeout, TimeoutError):
                break
            except WSClosed:
                break
        return out

    def wait_close_code(self, timeout=5.0):
        """Read (discarding messages) until the close; its code, or None."""
        deadline = time.monotonic() + timeout
        for _ in range(100000):
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            try:
                self.recv_message(left)
            except (socket.timeout, TimeoutError):
                return None
            except WSClosed:
                return self.close_code if self.close_code is not None else 1006
        return None

    def abort(self):
        """Drop the connection with a TCP reset."""
        with contextlib.suppress(OSError):
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                 struct.pack("ii", 1, 0))
        with contextlib.suppress(OSError):
            self.sock.close()
        self.closed = True

    close = abort


def _mask_fast(payload, mask):
    n = len(payload)
    m = (mask * (n // 4 + 1))[:n]
    return (int.from_bytes(payload, "big") ^ int.from_bytes(m, "big")).to_bytes(n, "big")


def raw_ws_on(r, slot, rcvbuf=None, max_attempts=300, registry=None):
    """A RawWS held by worker slot (new connections until one lands there)."""
    deadline = time.monotonic() + 15
    for attempt in range(max_attempts):
        c = RawWS(r.port, rcvbuf=rcvbuf)
        if slot is None or c.worker == slot:
            if registry is not None:
                registry.append(c)
            return c
        c.abort()
        if time.monotonic() > deadline:
            break
        miss_pause(attempt)
    raise AssertionError("no raw WebSocket on worker %s" % slot)


class SlowBackend(threading.Thread):
    """The Mephisto backend as a raw WebSocket that reads at most rate
    packets/s on a thread (a busy backend: what the router writes for it
    waits, in the kernel and then in the router), from its alive until its
    channel closes (then the test makes a new one, as Mephisto
    reconnects). Set .fast to read at full speed."""

    def __init__(self, port, rate, want_worker=None, rcvbuf=64 * 1024):
        super().__init__(daemon=True)
        self.rate = rate
        for attempt in range(300):
            self.ws = RawWS(port, rcvbuf=rcvbuf)
            if want_worker is None or self.ws.worker == want_worker:
                break
            self.ws.abort()
            miss_pause(attempt)
        self.ws.send_json(backend_packet("alive", MEPHISTO))
        self.packets = []
        self.stop = threading.Event()
        self.fast = threading.Event()
        self.closed = False
        self.start()

    def run(self):
        try:
            for n in range(10000000):
                if self.stop.is_set():
                    break
                try:
                    self.packets.append(json.loads(self.ws.recv_message(0.2)))
                except (socket.timeout, TimeoutError):
                    continue
                except (WSClosed, OSError, ValueError):
                    break
                if n % 10 == 9 and not self.fast.is_set():
                    time.sleep(10.0 / self.rate)
        finally:
            self.closed = True

    @property
    def close_code(self):
        return self.ws.close_code

    def count(self, pred):
        return sum(1 for p in list(self.packets) if pred(p))

    def finish(self):
        """Read what is left at full speed, then stop."""
        self.stop.set()
        self.join(5)
        if not self.closed:
            self.packets += self.ws.recv_all(idle=1.0, limit=10.0)
        self.ws.abort()


# --------------------------------------------------------------------------
# packets

def mbu(agent, data):
    return {"packet_type": "mephisto_bound_live_update", "subject_id": agent,
            "data": data, "client_timestamp": time.time()}


def in_order_without_gaps(ks, n):
    """A description of what is wrong with ks as the sequence 0..n-1, or
    None."""
    if ks == list(range(n)):
        return None
    dups = len(ks) - len(set(ks))
    missing = sorted(set(range(n)) - set(ks))
    out_of_order = sum(1 for a, b in zip(ks, ks[1:]) if b <= a)
    return ("%d of %d received, %d missing (first %s), %d duplicated, "
            "%d out of order" % (len(ks), n, len(missing), missing[:10], dups,
                                 out_of_order))

