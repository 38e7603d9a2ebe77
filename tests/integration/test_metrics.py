"""/metrics (issue 13): the supervisor's and the workers' figures in the
Prometheus text format, served on metrics_listen only."""

import json
import re
import time

import requests

from conftest import WSClient, free_port, wait_until
from mephisto_fakes import FakeBackend, browser_packet


def scrape(port):
    with requests.Session() as s:
        s.trust_env = False
        return s.get("http://127.0.0.1:%d/metrics" % port, timeout=5)


def values(text):
    """{'name{labels}': float} of a Prometheus text exposition."""
    out = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name, value = line.rsplit(" ", 1)
        out[name] = float(value)
    return out


def test_metrics_during_traffic(router_factory):
    mport = free_port()
    r = router_factory(metrics_listen="127.0.0.1:%d" % mport, workers=2)
    backend = FakeBackend(r.ws_url, poll_interval=None).connect()
    agents = []
    try:
        for i in range(4):
            a = WSClient(r.ws_url)
            agents.append(a)
            a.send(json.dumps(browser_packet("alive", "m%d" % i)))
            a.recv()
            for n in range(5):
                a.send(json.dumps(browser_packet("mephisto_bound_live_update", "m%d" % i,
                                                 {"n": n})))
        backend.wait_n(lambda p: p.get("packet_type") == "mephisto_bound_live_update", 20)
        assert r.get("/no-such-file").status_code == 404

        def ready():
            m = values(scrape(mport).text)
            return m if sum(v for k, v in m.items()
                            if k.startswith("mephisto_router_packets_in_total")) >= 24 else None
        m = wait_until(ready, 5)
        assert m, scrape(mport).text
        resp = scrape(mport)
        assert resp.status_code == 200
        assert resp.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        assert "# TYPE mephisto_router_packets_routed_total counter" in resp.text
        assert m["mephisto_router_backend_attached"] == 1
        assert m['mephisto_router_agents{status="none"}'] == 4
        assert m["mephisto_router_agents_attached"] == 4
        assert m["mephisto_router_workers"] == 2
        assert m["mephisto_router_packets_routed_total"] >= 20
        assert sum(v for k, v in m.items()
                   if k.startswith("mephisto_router_websockets{")) == 5
        assert sum(v for k, v in m.items()
                   if k.startswith("mephisto_router_http_errors_total{")) >= 1
        assert m['mephisto_router_worker_restarts_total{cause="crash"}'] == 0
        assert m['mephisto_router_http_request_duration_seconds_count'
                 '{endpoint="static"}'] >= 1  # the 404 above
        assert m['mephisto_router_http_request_duration_seconds_bucket'
                 '{endpoint="static",le="+Inf"}'] == \
            m['mephisto_router_http_request_duration_seconds_count{endpoint="static"}']
        assert m['mephisto_router_packets_received_total{type="mephisto_bound_live_update",'
                 'from="agent"}'] == 20
        assert m['mephisto_router_packets_received_total{type="alive",from="backend"}'] == 1
        assert m["mephisto_router_db_commits_total"] >= 1
        # every sample line is name{labels} value
        for line in resp.text.splitlines():
            assert line.startswith("#") or re.match(
                r'^mephisto_router_[a-z_]+(\{[a-z_]+="[^"]*"(,[a-z_]+="[^"]*")*\})? \S+$',
                line), line
    finally:
        for a in agents:
            a.close()
        backend.stop()


def test_metrics_only_on_their_address(router_factory):
    mport = free_port()
    r = router_factory(metrics_listen="127.0.0.1:%d" % mport)
    assert r.get("/metrics").status_code == 404  # not on the public port
    with requests.Session() as s:
        s.trust_env = False
        assert s.get("http://127.0.0.1:%d/" % mport, timeout=5).status_code == 404
        assert s.get("http://127.0.0.1:%d/is_alive" % mport, timeout=5).status_code == 404
    assert scrape(mport).status_code == 200


def test_metrics_address_taken_is_not_fatal(router_factory):
    import socket
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen(1)
    try:
        port = holder.getsockname()[1]
        r = router_factory(metrics_listen="127.0.0.1:%d" % port)
        assert r.get("/is_alive").status_code == 200
        assert wait_until(lambda: "/metrics is not served" in r.log(), 3)
    finally:
        holder.close()


def test_status_says_whether_the_router_runs(router_factory, cli):
    r = router_factory()
    db = r.keys["state_path"]
    res = cli(["status", "--db", db])
    assert res.returncode == 0, res
    assert "router:                running (pid %d)" % r.pid in res.stdout, res.stdout
    assert "agents per status:\n  (none)" in res.stdout, res.stdout
    assert r.stop() == 0
    res = cli(["status", "--db", db])
    assert "router:                not running (stopped" in res.stdout, res.stdout


def test_agent_churn_is_summed_up(router_factory):
    r = router_factory(reconnect_grace=0.3)
    agents = []
    for i in range(20):
        a = WSClient(r.ws_url)
        a.send(json.dumps(browser_packet("alive", "churn-%d" % i)))
        a.recv()
        agents.append(a)
    for a in agents:
        a.close()

    def total():
        return sum(int(m.group(1)) for m in re.finditer(
            r"info supervisor: (\d+) agents? disconnected: no reconnection", r.log()))
    assert wait_until(lambda: total() == 20, 5), r.log_tail()
    assert len(re.findall(r"agents? disconnected", r.log())) <= 3
    assert "churn-5: no reconnection" not in r.log()  # per agent: debug only


def test_systemd_notify_ready_and_status(router_factory, tmp_path):
    """Type=notify: READY=1 once every worker accepts, then STATUS= lines
    (a stand-in for systemd's notification socket)."""
    import socket
    path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(5)
    try:
        r = router_factory(env={"NOTIFY_SOCKET": path})
        got = []
        deadline = time.monotonic() + 6
        while time.monotonic() < deadline and not any(
                g.startswith("STATUS=") for g in got):
            try:
                got.append(sock.recv(4096).decode())
            except socket.timeout:
                break
        assert "READY=1" in got, got
        status = [g for g in got if g.startswith("STATUS=")]
        assert status and "2 of 2 workers" in status[0] and "backend away" in status[0], got
        assert r.get("/is_alive").status_code == 200
    finally:
        sock.close()


def test_access_log(router_factory):
    r = router_factory(access_log=1)
    assert r.get("/is_alive").status_code == 200
    assert r.get("/").status_code == 200  # a static file
    assert r.get("/no-such-file").status_code == 404
    with requests.Session() as s:
        s.trust_env = False
        assert s.post(r.url + "/log_error", json={"error_data": {}},
                      timeout=5).status_code == 200

    def lines():
        return re.findall(r'access 127\.0\.0\.1 "(\w+) (\S+)" (\d+) (-?\d+) [\d.]+ ms',
                          r.log())
    assert wait_until(lambda: len(lines()) >= 4, 5), r.log_tail()
    got = {(m, p, int(st)) for m, p, st, _ in lines()}
    assert {("GET", "/is_alive", 200), ("GET", "/", 200), ("GET", "/no-such-file", 404),
            ("POST", "/log_error", 200)} <= got, got
    # off by default
    quiet = router_factory()
    assert quiet.get("/is_alive").status_code == 200
    assert "access " not in quiet.log()


def test_status_json(router_factory, cli):
    r = router_factory()
    a = WSClient(r.ws_url)
    a.send(json.dumps(browser_packet("alive", "j1")))
    a.recv()
    a.send(json.dumps(browser_packet("mephisto_bound_live_update", "j1", {"n": 1})))
    a.send(json.dumps(browser_packet("heartbeat", "j1")))
    a.recv()
    db = r.keys["state_path"]

    def status():
        res = cli(["status", "--db", db, "--json"])
        assert res.returncode == 0, res
        return json.loads(res.stdout)
    s = wait_until(lambda: (lambda s: s if s["queued_packets"] == 1 else None)(status()), 5)
    assert s, status()
    assert s["running"] is True and s["router_meta"]["pid"] == r.pid
    assert s["agents"] == 1 and s["agents_per_status"] == {"none": 1}
    assert s["queued_per_destination"]["mephisto"]["packets"] == 1
    a.close()


def test_grafana_dashboard_uses_metrics_that_exist(router_factory):
    """dist/grafana/mephisto-router.json: every mephisto_router_ series its
    panels query is one /metrics serves (a histogram's _bucket included)."""
    from pathlib import Path
    dash = json.loads((Path(__file__).resolve().parents[2] /
                       "dist/grafana/mephisto-router.json").read_text())
    mport = free_port()
    r = router_factory(metrics_listen="127.0.0.1:%d" % mport)
    served = set()
    for name, kind in re.findall(r"^# TYPE (mephisto_router_[a-z_]+) (\w+)$",
                                 scrape(mport).text, re.M):
        served.add(name)
        if kind == "histogram":
            served |= {name + "_bucket", name + "_sum", name + "_count"}
    queried = set()
    for p in dash["panels"]:
        for t in p["targets"]:
            queried |= set(re.findall(r"mephisto_router_[a-z_]+", t["expr"]))
    assert queried and queried <= served, queried - served


def test_heartbeat_answers_and_agent_queues_are_measured(router_factory):
    """The router's part of a heartbeat's round trip is a histogram; the
    agents' queues show depth, bytes and age."""
    mport = free_port()
    r = router_factory(metrics_listen="127.0.0.1:%d" % mport, workers=2)
    backend = FakeBackend(r.ws_url, poll_interval=None).connect()
    a = WSClient(r.ws_url)
    try:
        a.send(json.dumps(browser_packet("alive", "hb1")))
        a.recv()
        for _ in range(5):
            a.send(json.dumps(browser_packet("heartbeat", "hb1")))
            assert json.loads(a.recv())["packet_type"] == "heartbeat"
        # an agent away: what the backend sends it waits in its queue
        gone = WSClient(r.ws_url)
        gone.send(json.dumps(browser_packet("alive", "away1")))
        gone.recv()
        gone.close()
        time.sleep(0.3)
        for n in range(3):
            backend.send({"packet_type": "client_bound_live_update",
                          "subject_id": "away1", "data": {"n": n}})

        def ready():
            m = values(scrape(mport).text)
            return m if (m.get("mephisto_router_heartbeat_answer_seconds_count", 0) >= 5 and
                         m.get("mephisto_router_agent_queue_packets", 0) >= 3) else None
        m = wait_until(ready, 5)
        assert m, scrape(mport).text
        assert m["mephisto_router_heartbeat_answer_seconds_count"] == 5
        assert m['mephisto_router_heartbeat_answer_seconds_bucket{le="+Inf"}'] == 5
        assert 0 < m["mephisto_router_heartbeat_answer_seconds_sum"] < 5
        assert m["mephisto_router_agent_queues"] == 1
        assert m["mephisto_router_agent_queue_packets"] == 3
        assert m["mephisto_router_agent_queue_deepest_packets"] == 3
        assert m["mephisto_router_agent_queue_bytes"] > 3 * 40
        assert m["mephisto_router_agent_queue_oldest_age_seconds"] > 0
        assert m["mephisto_router_workers_configured"] == 2
        assert any(k.startswith("mephisto_router_build_info{version=") for k in m)
    finally:
        a.close()
        backend.stop()


def test_status_shows_the_live_figures(router_factory, cli):
    """status adds the running router's workers, counters and queues, read
    from its metrics_listen; never another router's figures."""
    mport = free_port()
    r = router_factory(metrics_listen="127.0.0.1:%d" % mport, workers=2)
    a = WSClient(r.ws_url)
    a.send(json.dumps(browser_packet("alive", "st1")))
    a.recv()
    a.send(json.dumps(browser_packet("heartbeat", "st1")))
    a.recv()
    conf = str(r.config_path)

    def text():
        res = cli(["status", "--config", conf])
        assert res.returncode == 0, res
        return res.stdout if "heartbeat answers      1," in res.stdout else None
    out = wait_until(text, 5)
    assert out, cli(["status", "--config", conf]).stdout
    assert "live figures (http://127.0.0.1:%d/metrics)" % mport in out
    assert "workers                2 of 2 running; restarted: 0 crashed" in out
    assert re.search(r"worker [12] +\d+ connections, 1 WebSockets, packets 2 in", out), out
    res = cli(["status", "--config", conf, "--json"])
    s = json.loads(res.stdout)
    assert s["live"]["mephisto_router_workers"] == 2
    assert s["live"]["mephisto_router_heartbeat_answer_seconds_count"] == 1
    # a database whose router is not the one on that metrics address
    other = router_factory(metrics_listen="none")
    res = cli(["status", "--config", conf, "--db", other.keys["state_path"]])
    assert "is another router's" in res.stdout, res.stdout
    res = cli(["status", "--db", other.keys["state_path"], "--json"])
    assert "live" not in json.loads(res.stdout)
    a.close()
    assert r.stop() == 0
    res = cli(["status", "--config", conf])
    assert "live figures:          (not available: the router does not run)" in res.stdout
