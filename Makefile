# mephisto-router: every build, test, install and run target.
#
#   make            dependencies (first time: Debian packages and a static
#                   libwebsockets with libevent, see dist/deps.sh), then the binary
#   make run        build, then run the router on the embedded default config
#   make test       every test suite, one after another (what CI runs, but
#                   the timed fuzzing): unit and integration, both again
#                   under ASan + UBSan, the fault suite, each fuzz harness
#                   over its corpus, Mephisto's launchers, real browsers
#   make test-quick build, then unit and integration tests (about 2 minutes)
#   make asan       the same binary with AddressSanitizer + UBSan (build/asan/)
#   make test-asan  unit and integration tests against the ASan build
#   make install    binary to $(PREFIX)/bin, systemd unit to /etc/systemd/system

VERSION := 0.1.0
# the commit built, for --version (none outside a git checkout)
COMMIT := $(shell git rev-parse --short HEAD 2>/dev/null || echo none)
OUT ?= build
DEPS := build/deps
LWS := $(DEPS)/lws
DEPS_STAMP := $(DEPS)/.done
PREFIX ?= /usr/local
PYTHON ?= /usr/bin/python3

CC ?= gcc
SAN_FLAGS ?=
CFLAGS := -std=gnu11 -D_GNU_SOURCE -Wall -Wextra -Werror -O2 -g \
	-DMR_VERSION='"$(VERSION)"' -DMR_COMMIT='"$(COMMIT)"' -I$(LWS)/include \
	$(SAN_FLAGS) -MMD -MP
LDFLAGS := $(SAN_FLAGS)
LIBS := $(LWS)/lib/libwebsockets.a -levent_core -levent_extra -lmsgpackc -lsqlite3 \
	-ljansson -lyajl -lz -lcap -lssl -lcrypto -lpthread -lm

CORE_SRC := $(wildcard core/*.c)
ROUTER_SRC := $(CORE_SRC) $(wildcard worker/*.c) $(wildcard supervisor/*.c) \
	cmd/mephisto-router.c
ROUTER_OBJ := $(ROUTER_SRC:%.c=$(OUT)/obj/%.o) $(OUT)/obj/supervisor/schema.o
CORE_OBJ := $(CORE_SRC:%.c=$(OUT)/obj/%.o)
UNIT_TESTS := $(patsubst tests/unit/%.c,$(OUT)/tests/%,$(wildcard tests/unit/test_*.c))

.PHONY: all deps run test test-quick test-unit test-integration asan test-asan install uninstall clean

all: $(OUT)/mephisto-router

deps: $(DEPS_STAMP)

$(DEPS_STAMP): dist/deps.sh
	bash dist/deps.sh build
	@touch $@

$(OUT)/obj/%.o: %.c | $(DEPS_STAMP)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -c $< -o $@

# schema.sql is embedded with .incbin, so the object depends on it.
$(OUT)/obj/supervisor/schema.o: supervisor/schema.S schema.sql
	@mkdir -p $(dir $@)
	$(CC) -c $< -o $@

$(OUT)/mephisto-router: $(ROUTER_OBJ)
	$(CC) $(LDFLAGS) -o $@ $^ $(LIBS)

$(OUT)/tests/test_%: tests/unit/test_%.c $(CORE_OBJ) $(OUT)/obj/supervisor/store.o \
		$(OUT)/obj/supervisor/schema.o $(OUT)/obj/worker/wire.o | $(DEPS_STAMP)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -o $@ $^ -lcmocka $(LIBS) $(LDFLAGS)

# The tests of the worker's protocol code (ws.c, http.c) run it in-process
# (tests/unit/lws_harness.c): they link its objects and the harness too,
# everything of worker/ but worker.c, which the harness stands in for.
UNIT_LWS_TESTS := $(OUT)/tests/test_ws $(OUT)/tests/test_http
UNIT_WORKER_OBJ := $(patsubst %,$(OUT)/obj/worker/%.o,dispatch ws http static upload endpoints) \
	$(OUT)/obj/tests/unit/lws_harness.o
$(UNIT_LWS_TESTS): $(UNIT_WORKER_OBJ)

run: all
	./$(OUT)/mephisto-router

# One suite after another, whatever -j says (they share the machine).
test:
	$(MAKE) test-quick
	$(MAKE) test-asan
	$(MAKE) test-faults
	$(MAKE) fuzz-regress
	$(MAKE) test-launcher
	$(MAKE) test-browser

test-quick: test-unit test-integration

# Garbage IPC input may claim a huge msgpack array; the reader must get
# NULL from malloc and report it, so ASan must not abort first.
test-unit: $(UNIT_TESTS)
	@set -e; for t in $(UNIT_TESTS); do echo "== $$t"; \
		ASAN_OPTIONS=allocator_may_return_null=1 ./$$t; done

# The load generator and echo server are built too, so a change that breaks
# them fails here rather than at the next benchmark.
test-integration: all $(OUT)/mr-load $(OUT)/mr-echo
	MEPHISTO_ROUTER_BIN=$(abspath $(OUT)/mephisto-router) \
		$(PYTHON) -m pytest -q tests/integration

asan:
	$(MAKE) OUT=build/asan SAN_FLAGS="-fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined" all

test-asan:
	$(MAKE) OUT=build/asan SAN_FLAGS="-fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined" test-quick

install: all
	install -D -m 0755 $(OUT)/mephisto-router $(DESTDIR)$(PREFIX)/bin/mephisto-router
	install -D -m 0644 dist/mephisto-router.8 \
		$(DESTDIR)$(PREFIX)/share/man/man8/mephisto-router.8
	install -D -m 0644 dist/systemd/mephisto-router.service \
		$(DESTDIR)/etc/systemd/system/mephisto-router.service
	@test -e $(DESTDIR)/etc/mephisto-router.conf || \
		install -D -m 0644 dist/mephisto-router.conf $(DESTDIR)/etc/mephisto-router.conf

# /etc/mephisto-router.conf is left (it may hold your settings), as is the
# state under /var/lib/mephisto-router.
uninstall:
	rm -f $(DESTDIR)$(PREFIX)/bin/mephisto-router \
		$(DESTDIR)$(PREFIX)/share/man/man8/mephisto-router.8 \
		$(DESTDIR)/etc/systemd/system/mephisto-router.service

clean:
	rm -rf $(OUT)/obj $(OUT)/tests $(OUT)/mephisto-router build/asan

-include $(shell find $(OUT)/obj -name '*.d' 2>/dev/null)

# ---- load generator and benchmarks (bench/, cmd/mr-load.c, cmd/mr-echo.c) ----
#   make build/mr-load build/mr-echo   the load generator and the echo server
#   make bench       the standard set against build/mephisto-router; rewrites
#                    BENCHMARKS.md (about 8 minutes on 2 cores)
#   make bench-big   100,000 agents heartbeating every 6 s (not in bench)
BENCH_OBJ := $(patsubst %.c,$(OUT)/obj/%.o,$(wildcard bench/*.c))

.PHONY: bench bench-big bench-state bench-clean

$(OUT)/mr-load: $(OUT)/obj/cmd/mr-load.o $(BENCH_OBJ) $(OUT)/obj/core/clock.o
	$(CC) $(LDFLAGS) -o $@ $^ $(LIBS)

$(OUT)/mr-echo: $(OUT)/obj/cmd/mr-echo.o $(BENCH_OBJ) $(OUT)/obj/core/clock.o
	$(CC) $(LDFLAGS) -o $@ $^ $(LIBS)

bench: all $(OUT)/mr-load $(OUT)/mr-echo
	OUT=$(OUT) bash bench/run.sh standard

bench-big: all $(OUT)/mr-load $(OUT)/mr-echo
	OUT=$(OUT) bash bench/run.sh big

# the state database: recovery time, up with the database on disk and in memory
bench-state: all $(OUT)/mr-load
	OUT=$(OUT) bash bench/state.sh

bench-clean:
	rm -rf $(OUT)/obj/bench $(OUT)/mr-load $(OUT)/mr-echo

# ---- further test suites, each in its own folder with its own .mk ----
# (tests/fuzz: make fuzz; tests/faults: make test-faults; tests/launcher:
# make test-launcher; tests/browser: make test-browser)
include $(wildcard tests/*/*.mk)
