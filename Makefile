# millrace: one plain Makefile.
#
#   make              build build/millrace-api and build/millrace-worker
#   make test         install what is missing, build, run every test (also under ASan+UBSan)
#   make run          install what is missing, build, start the stack
#   make bench        benchmarks (queue round trips vs redis-benchmark, ...)
#   make fuzz         libFuzzer targets on the parsers (FUZZ_SECONDS each, default 60)
#   make format       clang-format every source; make format-check only checks
#   make clean
#
# Objects go to build/obj (normal) and build/asan/obj (AddressSanitizer +
# UndefinedBehaviorSanitizer); -MMD -MP keeps header dependencies.

CC      ?= cc
BUILD   := build
PKGS    := hiredis libmicrohttpd jansson libcurl
PKG_CFLAGS := $(shell pkg-config --cflags $(PKGS) 2>/dev/null)
PKG_LIBS   := $(shell pkg-config --libs $(PKGS) 2>/dev/null)

WARN    := -Wall -Wextra -Wshadow -Werror
CFLAGS  ?= -O2 -g
CFLAGS  += -std=c11 -D_GNU_SOURCE $(WARN) -I. $(PKG_CFLAGS) -MMD -MP
LDLIBS  := $(PKG_LIBS) -lm -lpthread
TEST_LIBS := -lcmocka -lcurl
SAN     := -fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer

COMMON_SRC := $(wildcard common/*.c)
API_SRC    := $(wildcard api/*.c)
WORKER_SRC := $(wildcard worker/*.c) $(wildcard kernels/*.c) $(wildcard kernels/cpu/*.c)
# the engine: everything of the worker but its main(), linked into tests too
ENGINE_SRC := $(filter-out worker/main.c,$(WORKER_SRC))
# tests/test_*.c are cmocka programs; tests/support/*.c is linked into each.
TEST_SRC    := $(wildcard tests/test_*.c)
SUPPORT_SRC := $(wildcard tests/support/*.c)
BENCH_SRC   := $(wildcard tests/bench_*.c)
FUZZ_SRC    := $(wildcard tests/fuzz_*.c)
# Other tests/*.c are programs the tests run (test doubles such as fake_worker).
TOOL_SRC    := $(filter-out $(TEST_SRC) $(BENCH_SRC) $(FUZZ_SRC),$(wildcard tests/*.c))

obj  = $(patsubst %.c,$(BUILD)/obj/%.o,$(1))
aobj = $(patsubst %.c,$(BUILD)/asan/obj/%.o,$(1))

# A test links the common objects, the support objects, the engine (worker/
# and kernels/ without main) and, when its name is that of an api/ module,
# that module's object too.
test_deps = $(call $(1),$(COMMON_SRC) $(SUPPORT_SRC) $(ENGINE_SRC) \
	$(filter $(patsubst tests/test_%.c,api/%.c,$(2)),$(filter-out api/main.c,$(API_SRC))))

TESTS      := $(patsubst tests/%.c,$(BUILD)/tests/%,$(TEST_SRC))
ASAN_TESTS := $(patsubst tests/%.c,$(BUILD)/asan/tests/%,$(TEST_SRC))
BENCHES    := $(patsubst tests/%.c,$(BUILD)/tests/%,$(BENCH_SRC))
FUZZERS    := $(patsubst tests/%.c,$(BUILD)/fuzz/%,$(FUZZ_SRC))
TOOLS      := $(patsubst tests/%.c,$(BUILD)/tests/%,$(TOOL_SRC))
ASAN_BINS  := $(BUILD)/asan/millrace-api $(BUILD)/asan/millrace-worker \
              $(patsubst tests/%.c,$(BUILD)/asan/tests/%,$(TOOL_SRC))

.PHONY: all test check check-unit check-asan bench fuzz run format format-check clean deps

all: $(BUILD)/millrace-api $(BUILD)/millrace-worker

$(BUILD)/millrace-api: $(call obj,$(API_SRC) $(COMMON_SRC))
	$(CC) $(CFLAGS) -o $@ $^ $(LDLIBS)

$(BUILD)/millrace-worker: $(call obj,$(WORKER_SRC) $(COMMON_SRC))
	$(CC) $(CFLAGS) -o $@ $^ $(LDLIBS)

# The same programs under the sanitizers: the ASan test runs start these
# (tests/support/stack.c picks build/asan/ when the test itself runs from there).
$(BUILD)/asan/millrace-api: $(call aobj,$(API_SRC) $(COMMON_SRC))
	$(CC) $(CFLAGS) $(SAN) -o $@ $^ $(LDLIBS)

$(BUILD)/asan/millrace-worker: $(call aobj,$(WORKER_SRC) $(COMMON_SRC))
	$(CC) $(CFLAGS) $(SAN) -o $@ $^ $(LDLIBS)

$(BUILD)/obj/%.o: %.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -c -o $@ $<

$(BUILD)/asan/obj/%.o: %.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(SAN) -c -o $@ $<

# keep objects that pattern chains would delete as intermediates
.SECONDARY:

.SECONDEXPANSION:
$(BUILD)/tests/%: $(BUILD)/obj/tests/%.o $$(call test_deps,obj,tests/%.c)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -o $@ $^ $(LDLIBS) $(TEST_LIBS)

$(BUILD)/asan/tests/%: $(BUILD)/asan/obj/tests/%.o $$(call test_deps,aobj,tests/%.c)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(SAN) -o $@ $^ $(LDLIBS) $(TEST_LIBS)

# libFuzzer needs clang; the fuzz targets are built from source with the
# fuzzer and the sanitizers in one step.
FUZZ_CC := clang
$(BUILD)/fuzz/%: tests/%.c $(COMMON_SRC) $(ENGINE_SRC)
	@mkdir -p $(dir $@)
	$(FUZZ_CC) -std=c11 -D_GNU_SOURCE -g -O1 -I. $(PKG_CFLAGS) \
		-fsanitize=fuzzer,address,undefined -o $@ $^ $(LDLIBS)

# The two commands of the README: each installs what is missing first.
test: deps
	@$(MAKE) --no-print-directory check

run: deps
	@$(MAKE) --no-print-directory all
	@scripts/run.sh

deps:
	@scripts/deps.sh

check: all $(TOOLS) $(ASAN_BINS) $(TESTS) $(ASAN_TESTS)
	@scripts/run-tests.sh $(TESTS) -- $(ASAN_TESTS)

bench: deps
	@scripts/deps.sh wrk
	@$(MAKE) --no-print-directory all $(TOOLS) $(BENCHES)
	@for b in $(BENCHES); do echo "== $$b"; $$b || exit 1; done

FUZZ_SECONDS ?= 60
fuzz: deps
	@scripts/deps.sh clang libclang-rt-14-dev
	@$(MAKE) --no-print-directory $(FUZZERS)
	@for f in $(FUZZERS); do \
		n=$$(basename $$f); mkdir -p $(BUILD)/fuzz-corpus/$$n; \
		echo "== $$n for $(FUZZ_SECONDS) s"; \
		$$f -max_total_time=$(FUZZ_SECONDS) -print_final_stats=1 $(BUILD)/fuzz-corpus/$$n \
			tests/fuzz-seeds/$$n || exit 1; \
	done

FORMAT_SRC = $(wildcard */*.c */*.h */*/*.c */*/*.h)
format:
	clang-format -i $(FORMAT_SRC)

format-check:
	clang-format --dry-run --Werror $(FORMAT_SRC)

clean:
	rm -rf $(BUILD)

-include $(shell find $(BUILD) -name '*.d' 2>/dev/null)
