# ---- the fault and abuse suite (tests/faults, issue 9) ----
#   make test-faults   malformed and idle connections, bytes that are not
#                      UTF-8, oversized ids and sizes, slow readers, a stalled
#                      backend or worker, kill -9 under load, a full or
#                      read-only database; against $(OUT)/mephisto-router
#                      (about 2 minutes on 2 cores; the database tests
#                      mount a tmpfs and use chattr +i: without root they
#                      are skipped)
.PHONY: test-faults

test-faults: all
	MEPHISTO_ROUTER_BIN=$(abspath $(OUT)/mephisto-router) \
		$(PYTHON) -m pytest -q tests/faults
