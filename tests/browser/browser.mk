# ---- tests/browser: real browsers against the real router ----
#   make test-browser   the published mephisto-task 2.0.4 in a small React task
#                       page (esbuild), three pages in headless Debian Chromium
#                       (playwright-core over DevTools), the router with a fake
#                       backend: registration, "in task", live updates both
#                       ways, a 5 s backend outage, submissions with a file,
#                       exactly-once accounting. About 15 s; under 2 minutes.
# tests/browser/deps.sh installs Debian's chromium when it is missing and
# checks Node.js >= 20 with npm; `npm ci` needs the npm registry (first run,
# or when package.json or package-lock.json change).
# On a failure, screenshots, consoles, WebSocket frames, the backend's packets
# and the router's log are kept under $(OUT)/browser-test/ (path printed).
BROWSER_DIR := tests/browser
BROWSER_NPM_STAMP := $(BROWSER_DIR)/node_modules/.npm-ci-done
# the router under test (e.g. build/asan/mephisto-router, or a stable copy)
BROWSER_ROUTER_BIN ?= $(abspath $(OUT)/mephisto-router)

.PHONY: test-browser browser-deps browser-page

browser-deps:
	bash $(BROWSER_DIR)/deps.sh

$(BROWSER_NPM_STAMP): $(BROWSER_DIR)/package.json $(BROWSER_DIR)/package-lock.json | browser-deps
	cd $(BROWSER_DIR) && npm ci --no-audit --no-fund
	@touch $@

browser-page: $(BROWSER_NPM_STAMP) | browser-deps
	cd $(BROWSER_DIR) && node build.mjs

test-browser: all browser-page
	cd $(BROWSER_DIR) && MEPHISTO_ROUTER_BIN=$(BROWSER_ROUTER_BIN) \
		BROWSER_TEST_ARTIFACTS=$(abspath $(OUT))/browser-test node test/run.mjs
