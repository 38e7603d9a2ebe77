# ---- fuzzing: a libFuzzer harness for every parser (tests/fuzz) ----
#   make fuzz           each harness for FUZZ_SECONDS (default 60), one after
#                       another, on a copy of its corpus in build/fuzz/run/;
#                       fails if any crashed (its input is then in
#                       build/fuzz/run/HARNESS/artifacts/). New finds stay in
#                       the copy: a crash worth keeping is added to
#                       tests/fuzz/corpus/HARNESS/ by hand.
#   make fuzz-regress   each harness once over its corpus (seconds)
#   make fuzz-build     the harnesses: build/fuzz/fuzz_*
#   FUZZ_HARNESSES="fuzz_ipc fuzz_wire" limits either to those.
# Built with clang, -fsanitize=fuzzer,address,undefined; the objects are
# compiled again into build/fuzz/obj/, apart from the gcc build. The static
# libwebsockets is linked as it is (uninstrumented). clang and libFuzzer
# come from Debian: the first build installs them (dist/deps.sh, DEPS_FUZZ=1).

FUZZ_CC ?= clang
FUZZ_OUT := build/fuzz
FUZZ_SECONDS ?= 60
FUZZ_STAMP := $(DEPS)/.fuzz-done
FUZZ_SAN := -fsanitize=address,undefined -fno-sanitize-recover=undefined \
	-fno-omit-frame-pointer
FUZZ_CFLAGS := -std=gnu11 -D_GNU_SOURCE -Wall -Wextra -Werror -O1 -g \
	-DMR_VERSION='"$(VERSION)"' -I$(LWS)/include $(FUZZ_SAN) -MMD -MP
FUZZ_HARNESSES ?= fuzz_wire fuzz_ipc fuzz_config fuzz_http_head fuzz_multipart

# what each harness links besides its own file: all of core/ (shared by
# both processes, so new files there need no change here)
FUZZ_CORE_OBJ := $(patsubst %.c,%,$(wildcard core/*.c))
FUZZ_HTTP_OBJ := worker/dispatch worker/http worker/endpoints worker/static worker/upload \
	worker/ws worker/wire tests/fuzz/http_driver $(FUZZ_CORE_OBJ)
fuzz_wire_OBJ := worker/wire $(FUZZ_CORE_OBJ)
fuzz_ipc_OBJ := $(FUZZ_CORE_OBJ)
fuzz_config_OBJ := $(FUZZ_CORE_OBJ)
fuzz_http_head_OBJ := $(FUZZ_HTTP_OBJ)
fuzz_multipart_OBJ := $(FUZZ_HTTP_OBJ)
FUZZ_ALL := fuzz_wire fuzz_ipc fuzz_config fuzz_http_head fuzz_multipart

.PHONY: fuzz fuzz-build fuzz-regress fuzz-clean

fuzz-build: $(addprefix $(FUZZ_OUT)/,$(FUZZ_HARNESSES))

$(FUZZ_STAMP): dist/deps.sh | $(DEPS_STAMP)
	DEPS_FUZZ=1 bash dist/deps.sh build
	@touch $@

$(FUZZ_OUT)/obj/%.o: %.c | $(FUZZ_STAMP)
	@mkdir -p $(dir $@)
	$(FUZZ_CC) $(FUZZ_CFLAGS) -fsanitize=fuzzer-no-link -c $< -o $@

# the static lws is made by the dependencies' build (a rebuild, after its
# patches changed, relinks the harnesses)
$(LWS)/lib/libwebsockets.a: | $(DEPS_STAMP)

define FUZZ_LINK
$(FUZZ_OUT)/$(1): tests/fuzz/$(1).c $(patsubst %,$(FUZZ_OUT)/obj/%.o,$($(1)_OBJ)) \
		$(LWS)/lib/libwebsockets.a | $(FUZZ_STAMP)
	@mkdir -p $(FUZZ_OUT)
	$$(FUZZ_CC) $$(FUZZ_CFLAGS) -fsanitize=fuzzer -o $$@ $$(filter %.c %.o,$$^) $$(LIBS)
endef
$(foreach h,$(FUZZ_ALL),$(eval $(call FUZZ_LINK,$(h))))

fuzz: fuzz-build
	FUZZ_OUT=$(FUZZ_OUT) bash tests/fuzz/run.sh fuzz $(FUZZ_SECONDS) $(FUZZ_HARNESSES)

fuzz-regress: fuzz-build
	FUZZ_OUT=$(FUZZ_OUT) bash tests/fuzz/run.sh regress 0 $(FUZZ_HARNESSES)

fuzz-clean:
	rm -rf $(FUZZ_OUT)

-include $(shell find $(FUZZ_OUT) -name '*.d' 2>/dev/null)

# fuzz_ipc's seeds are packed with core/ipc.c's encoders; fuzz_wire's,
# fuzz_config's and the HTTP ones come from make_seeds.py. Both only add
# or rewrite their own files in tests/fuzz/corpus/.
.PHONY: fuzz-seeds
fuzz-seeds: $(patsubst %,$(FUZZ_OUT)/obj/%.o,$(FUZZ_CORE_OBJ)) | $(FUZZ_STAMP)
	$(FUZZ_CC) $(FUZZ_CFLAGS) -o $(FUZZ_OUT)/ipc_seeds tests/fuzz/ipc_seeds.c $^ $(LIBS)
	mkdir -p tests/fuzz/corpus/fuzz_ipc
	$(FUZZ_OUT)/ipc_seeds tests/fuzz/corpus/fuzz_ipc
	$(PYTHON) tests/fuzz/make_seeds.py
