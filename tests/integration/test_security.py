"""Security (issue 10) through the real binary: who may become the backend
channel (backend_allow, trusted_proxies), and log lines a client cannot
forge. 127.0.0.2 is a second loopback address (all of 127.0.0.0/8 is
loopback on Linux), so a refused source needs no other host."""

import json

import websockets.exceptions

from conftest import WSClient, wait_until
from mephisto_fakes import FakeBackend, browser_packet

ALIVE_BACKEND = json.dumps({"packet_type": "alive", "subject_id": "mephisto",
                            "data": {}})


def closed_code(client, timeout=5):
    return client.wait_closed(timeout)


def test_backend_from_outside_backend_allow_is_refused(router_factory):
    r = router_factory(backend_allow="127.0.0.1")
    backend = FakeBackend(r.ws_url, poll_interval=None).connect()
    try:
        # an impostor from 127.0.0.2 says it is the backend: closed 1008
        impostor = WSClient(r.ws_url, local_addr=("127.0.0.2", 0))
        impostor.send(ALIVE_BACKEND)
        assert closed_code(impostor) == 1008
        # again and again from the same address: logged once (by each
        # worker), with the key to set
        for _ in range(6):
            again = WSClient(r.ws_url, local_addr=("127.0.0.2", 0))
            again.send(ALIVE_BACKEND)
            assert closed_code(again) == 1008
        lines = [l for l in r.log().splitlines() if "backend_allow" in l]
        assert 1 <= len(lines) <= 2, lines
        assert all("127.0.0.2" in l for l in lines)
        # the real channel was never displaced: an agent's update reaches it
        agent = WSClient(r.ws_url)
        agent.send(json.dumps(browser_packet("alive", "a1")))
        agent.recv()
        agent.send(json.dumps(browser_packet("mephisto_bound_live_update", "a1",
                                             {"n": 1})))
        backend.wait_for(lambda p: p.get("packet_type") ==
                         "mephisto_bound_live_update", what="the agent's update")
        agent.close()
    finally:
        backend.stop()


def test_backend_from_loopback_allowed_by_default(router_factory):
    r = router_factory()  # the embedded default: 127.0.0.0/8 and ::1
    client = WSClient(r.ws_url, local_addr=("127.0.0.2", 0))
    client.send(ALIVE_BACKEND)
    assert wait_until(lambda: "Mephisto channel" in r.log(), 5)
    assert client.is_open
    client.close()


def test_trusted_proxy_forwarded_for(router_factory):
    r = router_factory(backend_allow="10.9.9.9", trusted_proxies="127.0.0.1")
    # through the proxy from the allowed address (proxies append on the right)
    ok = WSClient(r.ws_url, extra_headers={"X-Forwarded-For": "1.2.3.4, 10.9.9.9"})
    ok.send(ALIVE_BACKEND)
    assert wait_until(lambda: "Mephisto channel" in r.log(), 5)
    assert ok.is_open
    # a client that forges the left part of the header gains nothing
    forged = WSClient(r.ws_url, extra_headers={"X-Forwarded-For": "10.9.9.9, 10.9.9.8"})
    forged.send(ALIVE_BACKEND)
    assert closed_code(forged) == 1008
    # the proxy's own address is not in backend_allow
    direct = WSClient(r.ws_url)
    direct.send(ALIVE_BACKEND)
    assert closed_code(direct) == 1008
    # an untrusted peer's X-Forwarded-For is not believed
    untrusted = WSClient(r.ws_url, local_addr=("127.0.0.2", 0),
                         extra_headers={"X-Forwarded-For": "10.9.9.9"})
    untrusted.send(ALIVE_BACKEND)
    assert closed_code(untrusted) == 1008
    ok.close()


def test_check_config_refuses_bad_address_lists(cli, tmp_path):
    conf = tmp_path / "bad.conf"
    conf.write_text("backend_allow = 127.0.0.1, not-an-address/99\n")
    res = cli(["--check-config", "--config", str(conf)])
    assert res.returncode != 0
    assert "backend_allow" in res.stderr


def test_agent_id_cannot_forge_a_log_line(router_factory):
    r = router_factory(reconnect_grace=0.3)
    evil = "x\n2026-01-01T00:00:00.000Z error supervisor: FORGED"
    agent = WSClient(r.ws_url)
    agent.send(json.dumps(browser_packet("alive", evil)))
    agent.recv()
    agent.close()
    assert wait_until(lambda: "no reconnection" in r.log(), 5)
    lines = r.log().splitlines()
    assert not [l for l in lines if l.startswith("2026-01-01")]
    # the id stays inside its own line, its newline written as \n
    assert [l for l in lines if "FORGED" in l] == \
        [l for l in lines if "x\\n2026-01-01" in l and "no reconnection" in l]
