"""The README's systemd path, as far as a machine without systemd allows:
the shipped unit's own commands run the way systemd would run them
(ExecStartPre, ExecStart with a stand-in for the notification socket,
both ExecReload lines, SIGTERM to the main process for KillMode=mixed), as
an unprivileged user (DynamicUser=) in the folders StateDirectory= makes,
with the unit's UMask=, on the dist config with /var/lib and /etc moved
into a scratch root. Uploads included."""

import contextlib
import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
import requests

from conftest import base_env, free_port, require_binary, sanitizer_report, wait_until

REPO = Path(__file__).resolve().parents[2]
NOBODY = 65534


def unit_lines(key):
    unit = (REPO / "dist/systemd/mephisto-router.service").read_text()
    return [m.group(1).strip() for m in re.finditer(r"^%s=(.*)$" % key, unit, re.M)]


class Unit:
    """The unit's commands with their paths moved under root."""

    def __init__(self, root):
        self.root = root
        self.binary = root / "usr/local/bin/mephisto-router"
        self.conf = root / "etc/mephisto-router.conf"
        self.umask = int(unit_lines("UMask")[0], 8)
        self.main = None

    def argv(self, line):
        line = line.lstrip("-@+!")
        line = line.replace("/usr/local/bin/mephisto-router", str(self.binary))
        line = line.replace("/etc/mephisto-router.conf", str(self.conf))
        if self.main is not None:
            line = line.replace("$MAINPID", str(self.main.pid))
        return line.split()

    def _as_service_user(self):
        os.setgroups([])
        os.setgid(NOBODY)
        os.setuid(NOBODY)
        os.umask(self.umask)

    def run(self, line, timeout=20):
        return subprocess.run(self.argv(line), capture_output=True, text=True,
                              timeout=timeout, env=base_env(),
                              cwd=str(self.root / "var/lib/mephisto-router"),
                              preexec_fn=self._as_service_user)

    def start(self, line, notify, log):
        env = base_env()
        env["NOTIFY_SOCKET"] = notify
        self.main = subprocess.Popen(
            self.argv(line), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            env=env, cwd=str(self.root / "var/lib/mephisto-router"),
            preexec_fn=self._as_service_user, start_new_session=True)
        return self.main


@pytest.fixture
def scratch_root():
    # pytest's tmp_path is root's only (0700): the service's user must reach it
    root = Path(tempfile.mkdtemp(prefix="mr-systemd-"))
    os.chmod(root, 0o755)
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


def test_the_unit_runs_as_written(scratch_root):
    if os.geteuid() != 0:
        pytest.skip("runs the service as another user: needs root")
    root = scratch_root
    unit = Unit(root)
    unit.binary.parent.mkdir(parents=True)
    shutil.copy(require_binary(), unit.binary)
    os.chmod(unit.binary, 0o755)
    # StateDirectory=: made by systemd, 0755, owned by the dynamic user
    for d in " ".join(unit_lines("StateDirectory")).split():
        folder = root / "var/lib" / d
        folder.mkdir(parents=True, exist_ok=True)
        os.chown(folder, NOBODY, NOBODY)
        os.chmod(folder, 0o755)
    port, mport = free_port(), free_port()
    conf = (REPO / "dist/mephisto-router.conf").read_text()
    conf = conf.replace("/var/lib/", str(root / "var/lib") + "/")
    conf = re.sub(r"^port = .*$", "port = %d" % port, conf, flags=re.M)
    conf = re.sub(r"^listen_address = .*$", "listen_address = 127.0.0.1", conf, flags=re.M)
    conf = re.sub(r"^metrics_listen = .*$", "metrics_listen = 127.0.0.1:%d" % mport, conf,
                  flags=re.M)
    conf = re.sub(r"^workers = .*$", "workers = 2", conf, flags=re.M)
    unit.conf.parent.mkdir(parents=True)
    unit.conf.write_text(conf)
    os.chmod(unit.conf, 0o644)

    notify_dir = root / "run"
    notify_dir.mkdir()
    os.chmod(notify_dir, 0o777)
    notify_path = str(notify_dir / "notify")
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(notify_path)
    os.chmod(notify_path, 0o777)
    notify.settimeout(0.2)
    got = []

    def told(pred, timeout):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for g in got:
                if pred(g):
                    return g
            with contextlib.suppress(socket.timeout):
                got.append(notify.recv(4096).decode())
        return None

    log_path = root / "router.log"
    main = None
    try:
        for line in unit_lines("ExecStartPre"):
            res = unit.run(line)
            assert res.returncode == 0, res
        with open(log_path, "w") as log:
            main = unit.start(unit_lines("ExecStart")[0], notify_path, log)
        assert told(lambda g: g == "READY=1", 15), (got, log_path.read_text())
        assert told(lambda g: g.startswith("STATUS=2 of 2 workers"), 5), got
        url = "http://127.0.0.1:%d" % port
        with requests.Session() as s:
            s.trust_env = False
            assert s.get(url + "/is_alive", timeout=5).status_code == 200
            # uploads work as installed: the folder is the service user's
            resp = s.post(url + "/submit_task",
                          data={"USED_AGENT_ID": "sd1", "final_string_data": "{}"},
                          files={"file": ("f.txt", b"hello systemd")}, timeout=10)
            assert resp.status_code == 200, (resp.text, log_path.read_text())
        uploads = list((root / "var/lib/mephisto-router/uploads").glob("mr-*"))
        assert len(uploads) == 1 and uploads[0].read_bytes() == b"hello systemd"
        st = uploads[0].stat()
        assert st.st_uid == NOBODY and stat.S_IMODE(st.st_mode) == 0o600
        db = root / "var/lib/mephisto-router/mephisto-router.db"
        assert db.stat().st_uid == NOBODY and stat.S_IMODE(db.stat().st_mode) == 0o600

        # systemctl reload: the check, then SIGHUP; the router says so
        reload = unit_lines("ExecReload")
        assert len(reload) == 2 and "--check-config" in reload[0], reload
        del got[:]
        res = unit.run(reload[0])
        assert res.returncode == 0, res
        res = unit.run(reload[1])
        assert res.returncode == 0, res
        assert told(lambda g: g.startswith("RELOADING=1"), 5), got
        assert told(lambda g: g == "READY=1", 5), got
        assert wait_until(lambda: "configuration re-read" in log_path.read_text(), 5)
        # a broken file: the reload stops at the check (exit 2), before SIGHUP
        unit.conf.write_text(conf + "no_such_key = 1\n")
        res = unit.run(reload[0])
        assert res.returncode == 2 and "no_such_key" in res.stderr, res
        unit.conf.write_text(conf)

        # systemctl stop: KillMode=mixed sends SIGTERM to the main process only
        del got[:]
        main.send_signal(signal.SIGTERM)
        stop_sec = float(unit_lines("TimeoutStopSec")[0])
        assert main.wait(timeout=stop_sec) == 0
        assert told(lambda g: g == "STOPPING=1", 2), got
        text = log_path.read_text()
        assert sanitizer_report(text) is None, sanitizer_report(text)
        # no worker died on the way (a respawn hides a crash)
        assert "killed by signal" not in text, text
        assert not re.search(r"exited with status [1-9]", text), text
    finally:
        notify.close()
        if main is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(main.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                main.wait(timeout=5)
