"""The remote case of README "Use with Mephisto": mephisto-router behind an
nginx reverse proxy, configured as README shows (WebSocket upgrade,
X-Forwarded-For, listen_address 127.0.0.1, trusted_proxies, backend_allow).
Plain HTTP: the TLS part is nginx's own. 127.0.0.2 plays the backend's
host and 127.0.0.3 a browser's (all of 127.0.0.0/8 is loopback)."""

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests" / "integration"))

from conftest import (Router, WSClient, free_port, require_binary,  # noqa: E402
                      sanitizer_report, wait_until)
from mephisto_fakes import browser_packet  # noqa: E402

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"

NGINX_CONF = """
worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/error.log info;
events {{ worker_connections 256; }}
http {{
    access_log {dir}/access.log;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    map $http_upgrade $connection_upgrade {{ default upgrade; '' close; }}
    server {{
        listen 127.0.0.1:{port};
        client_max_body_size 100m;
        location / {{
            proxy_pass http://127.0.0.1:{router_port};
            proxy_http_version 1.1;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection $connection_upgrade;
            proxy_set_header Host $host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_read_timeout 1h;
            proxy_send_timeout 1h;
        }}
    }}
}}
"""


@pytest.fixture
def proxied(tmp_path):
    if not os.path.exists(NGINX):
        pytest.skip("nginx is not installed (apt-get install nginx-light)")
    require_binary()
    router = Router(tmp_path, keys={"listen_address": "127.0.0.1",
                                    "trusted_proxies": "127.0.0.1, ::1",
                                    "backend_allow": "127.0.0.2"})
    router.start()
    ndir = tmp_path / "nginx"
    ndir.mkdir()
    port = free_port()
    (ndir / "nginx.conf").write_text(NGINX_CONF.format(dir=ndir, port=port,
                                                       router_port=router.port))
    nginx = subprocess.Popen([NGINX, "-c", str(ndir / "nginx.conf"), "-p", str(ndir),
                              "-g", "daemon off; user root;"],
                             stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                             stderr=subprocess.STDOUT, start_new_session=True)
    try:
        assert wait_until(lambda: _alive("http://127.0.0.1:%d" % port), 10), \
            (ndir / "error.log").read_text() if (ndir / "error.log").exists() else ""
        yield router, "127.0.0.1:%d" % port
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(nginx.pid, signal.SIGKILL)
        nginx.wait(timeout=5)
        left = router.cleanup()
        assert not left, left
        assert not sanitizer_report(router.log())


def _alive(url):
    try:
        with requests.Session() as s:
            s.trust_env = False
            return s.get(url + "/is_alive", timeout=1).status_code == 200
    except requests.RequestException:
        return False


def test_behind_nginx(proxied):
    router, front = proxied
    ws = "ws://%s/" % front
    be = agent = None
    try:
        # the backend's host: allowed through the proxy
        be = WSClient(ws, local_addr=("127.0.0.2", 0))
        be.send(json.dumps({"packet_type": "alive", "subject_id": "mephisto", "data": {}}))
        assert wait_until(lambda: "Mephisto channel" in router.log(), 5), router.log_tail()
        # a browser's host is not the backend, whatever it says
        impostor = WSClient(ws, local_addr=("127.0.0.3", 0))
        impostor.send(json.dumps({"packet_type": "alive", "subject_id": "mephisto",
                                  "data": {}}))
        assert impostor.wait_closed(5) == 1008
        assert "from 127.0.0.3" in router.log()
        # a browser through the proxy: alive, a live update to the backend
        agent = WSClient(ws, local_addr=("127.0.0.3", 0))
        agent.send(json.dumps(browser_packet("alive", "a1")))
        assert json.loads(agent.recv())["packet_type"] == "update_status"
        agent.send(json.dumps(browser_packet("mephisto_bound_live_update", "a1",
                                             {"through": "nginx"})))
        deadline = time.monotonic() + 5
        got = None
        while time.monotonic() < deadline and got is None:
            p = json.loads(be.recv())
            if p.get("packet_type") == "mephisto_bound_live_update":
                got = p
        assert got and got["data"]["through"] == "nginx"
        # and the backend's answer back to it
        be.send(json.dumps({"packet_type": "client_bound_live_update",
                            "subject_id": "a1", "data": {"back": 1}}))
        assert json.loads(agent.recv())["data"]["back"] == 1
        # an upload through the proxy, read back with download_file
        with requests.Session() as s:
            s.trust_env = False
            r = s.post("http://%s/submit_task" % front,
                       data={"USED_AGENT_ID": "a1", "final_string_data": "{}"},
                       files={"f": ("x.bin", b"\x00\x01proxied")}, timeout=5)
            assert r.status_code == 200, r.text
            sub = None
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline and sub is None:
                p = json.loads(be.recv())
                if p.get("packet_type") == "submit_unit":
                    sub = p
            name = sub["data"]["files"][0]["filename"]
            d = s.get("http://%s/download_file/%s" % (front, name), timeout=5)
            assert d.status_code == 200 and d.content == b"\x00\x01proxied"
            os.unlink(sub["data"]["files"][0]["path"])
    finally:
        for c in (agent, be):
            if c is not None:
                c.close()
