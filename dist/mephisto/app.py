#!/usr/bin/env python3
"""mephisto-router launcher for Mephisto's LocalArchitect, server_type=flask.

LocalArchitect runs `python app.py` in a copy of this folder, with PORT in
the environment, and stops it with SIGTERM. This script starts the
mephisto-router binary in this folder on the router's embedded default
configuration (port $PORT, static files from ./static, uploads in /tmp/,
state in ./mephisto-router.db), forwards SIGTERM, SIGINT and SIGHUP to it
and exits with its exit status (128 + N if signal N ended it).

The binary is $MEPHISTO_ROUTER_BIN, else `mephisto-router` on PATH.

No process is left behind: the router runs in its own session, so it gets
each signal once, from this launcher, never a second copy sent to this
launcher's process group (a second SIGTERM or SIGINT makes the router stop
its workers at once instead of draining them). Before it runs the router,
the child sets its parent-death signal to SIGTERM (prctl PR_SET_PDEATHSIG)
and checks that this launcher is still its parent: if this launcher dies,
even by SIGKILL, the router drains and exits (its workers follow their
supervisor). Where prctl is not available the router stays in this
launcher's process group (a kill of the group still reaches it) and a
warning says so.

Python 3 standard library only; no Flask needed.
"""

import os
import signal
import subprocess
import sys

ME = "mephisto-router launcher"
BINARY = "mephisto-router"
HERE = os.path.dirname(os.path.abspath(__file__))
FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
PR_SET_PDEATHSIG = 1


def fail(message, status):
    sys.stderr.write("%s: %s\n" % (ME, message))
    sys.stderr.flush()
    sys.exit(status)


def is_executable_file(path):
    return os.path.isfile(path) and os.access(path, os.X_OK)


def on_path(name):
    for d in os.environ.get("PATH", "").split(os.pathsep):
        if d:
            p = os.path.join(d, name)
            if is_executable_file(p):
                return p
    return None


def find_router():
    env = os.environ.get("MEPHISTO_ROUTER_BIN")
    if env:
        p = os.path.abspath(env)
        if not is_executable_file(p):
            fail("MEPHISTO_ROUTER_BIN=%s is not an executable file (point it at "
                 "the mephisto-router binary, or unset it to search PATH)" % env, 127)
        return p
    p = on_path(BINARY)
    if p is None:
        fail("cannot find the mephisto-router binary: MEPHISTO_ROUTER_BIN is not "
             "set and there is no mephisto-router on PATH (install it with "
             "`make install`, or set MEPHISTO_ROUTER_BIN to its path)", 127)
    return p


def libc_prctl():
    """libc's prctl, looked up before fork (the child only calls it)."""
    try:
        import ctypes
        return ctypes.CDLL(None, use_errno=True).prctl
    except (ImportError, OSError, AttributeError):
        return None


def main():
    router = find_router()
    prctl = libc_prctl()
    launcher = os.getpid()
    state = {"child": None, "pending": []}

    def forward(signum, frame):
        child = state["child"]
        if child is None:
            state["pending"].append(signum)
        elif child.returncode is None:
            # not reaped yet (only this thread reaps), so the pid is still ours
            try:
                os.kill(child.pid, signum)
            except ProcessLookupError:
                pass

    for s in FORWARDED:
        signal.signal(s, forward)

    def in_child():
        # between fork and exec: setsid, death signal, then make sure the
        # launcher did not die before the death signal was armed
        os.setsid()
        if prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
            os.write(2, ("%s: prctl(PR_SET_PDEATHSIG) failed\n" % ME).encode())
            os._exit(125)
        if os.getppid() != launcher:
            os._exit(125)  # the launcher is gone: nobody to serve

    if prctl is None:
        sys.stderr.write("%s: prctl not available: the router stays in this "
                         "process group and outlives this launcher if only the "
                         "launcher is killed with SIGKILL\n" % ME)
        preexec = None
    else:
        preexec = in_child
    try:
        child = subprocess.Popen([router], cwd=HERE, stdin=subprocess.DEVNULL,
                                 preexec_fn=preexec, close_fds=True)
    except OSError as e:
        fail("cannot start %s: %s" % (router, e), 127)
    state["child"] = child
    for s in state["pending"]:
        forward(s, None)
    rc = child.wait()
    sys.exit(rc if rc >= 0 else 128 - rc)


if __name__ == "__main__":
    main()
