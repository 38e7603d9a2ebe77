# ---- tests/launcher: dist/mephisto/ run as Mephisto's LocalArchitect runs it ----
#   make test-launcher  both launchers (server.js for server_type=node, app.py
#                       for server_type=flask) in a folder copied twice as
#                       LocalArchitect copies it, `npm install --offline` for
#                       node, PORT in the environment, the fake backend on
#                       ws://localhost:PORT/, an agent, live updates, an upload
#                       read from /tmp/, SIGTERM/SIGINT/SIGHUP, SIGKILL of the
#                       launcher, exit statuses, a missing binary. About 10 s.
# Needs Node.js and npm on PATH (Debian 12: apt-get install nodejs npm) besides
# the integration tests' python3-pytest, python3-requests, python3-websockets;
# nginx (the README's reverse-proxy front, test_proxy.py) is installed when
# missing (nginx-light).
LAUNCHER_ROUTER_BIN ?= $(abspath $(OUT)/mephisto-router)

.PHONY: test-launcher launcher-deps

launcher-deps:
	@command -v node >/dev/null && command -v npm >/dev/null || \
		{ echo "test-launcher: needs node and npm on PATH (apt-get install nodejs npm)" >&2; exit 1; }
	@command -v nginx >/dev/null || PATH="$$PATH:/usr/sbin" command -v nginx >/dev/null || \
		DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 install -y \
			--no-install-recommends nginx-light >/dev/null

test-launcher: all launcher-deps
	MEPHISTO_ROUTER_BIN=$(LAUNCHER_ROUTER_BIN) $(PYTHON) -m pytest -q tests/launcher
