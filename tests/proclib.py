"""/proc readers shared by the Python suites (tests/integration,
tests/faults, tests/launcher): processes (state, parent, group, command
line, children, descendants), their CPU time and memory, and the TCP
sockets the kernel lists. Linux only. A process that is gone (or a file
that cannot be read) gives None, [] or False, never an exception.

The suites find this module by putting tests/ on sys.path:
tests/integration/conftest.py does it (and so for tests/faults, whose
conftest loads it), tests/launcher/test_*.py do it before their imports.
"""

import os

CLK_TCK = os.sysconf("SC_CLK_TCK")
DEAD_STATES = ("Z", "X", "x")  # zombie, dead: not running any more


# --------------------------------------------------------------------------
# processes

def _stat_fields(pid):
    """(comm, [the fields after comm]) of /proc/PID/stat, or None if pid is
    gone.

    comm is in parentheses and may itself hold spaces or parentheses, so the
    fields are taken after the LAST ')'."""
    try:
        with open("/proc/%d/stat" % pid, "rb") as f:
            data = f.read().decode("utf-8", "replace")
    except OSError:
        return None
    lpar = data.find("(")
    rpar = data.rfind(")")
    if lpar < 0 or rpar < lpar:
        return None
    return data[lpar + 1:rpar], data[rpar + 2:].split()


def read_stat(pid):
    """(comm, state, ppid, pgrp, session) of pid, or None if it is gone."""
    fields = _stat_fields(pid)
    if fields is None or len(fields[1]) < 4:
        return None
    comm, rest = fields
    return comm, rest[0], int(rest[1]), int(rest[2]), int(rest[3])


def read_cmdline(pid):
    """The arguments of pid, a list ([] if it is gone)."""
    try:
        with open("/proc/%d/cmdline" % pid, "rb") as f:
            data = f.read()
    except OSError:
        return []
    return [a.decode("utf-8", "replace") for a in data.split(b"\0") if a]


def cmdline_text(pid):
    """The command line of pid as one string, arguments joined by spaces
    ("" if it is gone)."""
    return " ".join(read_cmdline(pid))


def all_pids():
    return [int(name) for name in os.listdir("/proc") if name.isdigit()]


def is_running(pid):
    """True if pid exists and is not a zombie."""
    st = read_stat(pid)
    return st is not None and st[1] not in DEAD_STATES


def all_stats():
    """{pid: read_stat(pid)} of every live (non-zombie) process."""
    out = {}
    for pid in all_pids():
        st = read_stat(pid)
        if st is not None and st[1] not in DEAD_STATES:
            out[pid] = st
    return out


def children_of(ppid):
    """Live (non-zombie) direct children of ppid."""
    return sorted(p for p, st in all_stats().items() if st[2] == ppid)


def group_members(pgid):
    """Live (non-zombie) processes whose process group is pgid."""
    return sorted(p for p, st in all_stats().items() if st[3] == pgid)


def descendants(root):
    """Live descendants of root (not root itself)."""
    kids = {}
    for pid, st in all_stats().items():
        kids.setdefault(st[2], []).append(pid)
    out, pending = [], [root]
    for _ in range(10000):
        if not pending:
            break
        for k in kids.get(pending.pop(), []):
            out.append(k)
            pending.append(k)
    return sorted(out)


def cpu_seconds(pid):
    """utime + stime of pid in seconds, or None if it is gone."""
    fields = _stat_fields(pid)
    if fields is None or len(fields[1]) < 13:
        return None
    rest = fields[1]
    return (int(rest[11]) + int(rest[12])) / CLK_TCK


def rss_mb(pid):
    """Resident memory of pid in MiB, or None if it is gone."""
    try:
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        return None
    return None


# --------------------------------------------------------------------------
# TCP sockets

def _tcp_rows(tables=("/proc/net/tcp",)):
    """The rows of the kernel's TCP tables, split into columns: 1 the local
    address, 2 the remote one (hex IP:port), 3 the state, 9 the inode."""
    for table in tables:
        try:
            with open(table) as f:
                lines = f.read().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            cols = line.split()
            if len(cols) >= 10:
                yield cols


def listening(port):
    """True if some socket LISTENs on port (IPv4 or IPv6)."""
    for cols in _tcp_rows(("/proc/net/tcp", "/proc/net/tcp6")):
        if cols[3] == "0A" and int(cols[1].rsplit(":", 1)[1], 16) == port:
            return True
    return False


def server_socket_inode(router_port, client_port):
    """Inode of the router-side TCP socket 127.0.0.1:router_port <->
    127.0.0.1:client_port, from /proc/net/tcp."""
    local = "0100007F:%04X" % router_port
    remote = "0100007F:%04X" % client_port
    for cols in _tcp_rows():
        if cols[1] == local and cols[2] == remote:
            return int(cols[9])
    return None


def pid_holding_inode(pids, inode):
    """The first of pids with an fd on socket inode, or None."""
    target = "socket:[%d]" % inode
    for pid in pids:
        fd_dir = "/proc/%d/fd" % pid
        try:
            fds = os.listdir(fd_dir)
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(os.path.join(fd_dir, fd)) == target:
                    return pid
            except OSError:
                continue
    return None
