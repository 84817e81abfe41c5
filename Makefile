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
#
# CUDA: kernels/cuda/*.cu is compiled wherever nvcc exists (on PATH or in
# CUDA_HOME), for sm_80 and sm_90 (CUDA_ARCH overrides), and linked into the
# normal builds with cudart and cuBLAS; `make CUDA=0` forces the CPU-only
# build. The sanitizer builds and the fuzzers never have it (the CUDA
# runtime and ASan do not mix): their backend.c knows no "cuda".

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

ifeq ($(origin NVCC),undefined)
NVCC := $(shell command -v nvcc 2>/dev/null || \
	(test -x $(or $(CUDA_HOME),/usr/local/cuda)/bin/nvcc && echo $(or $(CUDA_HOME),/usr/local/cuda)/bin/nvcc))
endif
CUDA_HOME ?= $(if $(NVCC),$(patsubst %/bin/nvcc,%,$(NVCC)),/usr/local/cuda)
CUDA      ?= $(if $(NVCC),1,0)
CUDA_ARCH ?= -gencode arch=compute_80,code=sm_80 -gencode arch=compute_90,code=sm_90
CUDA_WARN ?= -Xcompiler -Wall,-Wextra,-Werror -Werror all-warnings
NVCCFLAGS ?= -O3 -lineinfo
NVCCFLAGS += -std=c++17 $(CUDA_ARCH) -I. -DMILLRACE_CUDA $(CUDA_WARN) -MMD -MP
ifeq ($(CUDA),1)
CU_SRC    := $(wildcard kernels/cuda/*.cu)
CUDA_LIBS := -L$(CUDA_HOME)/lib64 -Wl,-rpath,$(CUDA_HOME)/lib64 -lcublas -lcublasLt -lcudart \
	-lstdc++
endif
CU_OBJ := $(patsubst %.cu,$(BUILD)/obj/%.o,$(CU_SRC))
# The C files that look at MILLRACE_CUDA are rebuilt when CUDA changes: the
# stamp holds the last value and is rewritten (newer) only when it differs.
CUDA_C_OBJ := $(BUILD)/obj/kernels/backend.o $(BUILD)/obj/tests/test_cuda.o
CUDA_STAMP := $(BUILD)/cuda.stamp
$(shell mkdir -p $(BUILD); [ "$$(cat $(CUDA_STAMP) 2>/dev/null)" = "$(CUDA)" ] || \
	echo "$(CUDA)" > $(CUDA_STAMP))

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
# test_readme runs the README's commands, which name build/ programs: once is enough
ASAN_TESTS := $(patsubst tests/%.c,$(BUILD)/asan/tests/%,$(filter-out tests/test_readme.c,$(TEST_SRC)))
BENCHES    := $(patsubst tests/%.c,$(BUILD)/tests/%,$(BENCH_SRC))
FUZZERS    := $(patsubst tests/%.c,$(BUILD)/fuzz/%,$(FUZZ_SRC))
TOOLS      := $(patsubst tests/%.c,$(BUILD)/tests/%,$(TOOL_SRC))
ASAN_BINS  := $(BUILD)/asan/millrace-api $(BUILD)/asan/millrace-worker \
              $(patsubst tests/%.c,$(BUILD)/asan/tests/%,$(TOOL_SRC))

.PHONY: all test check check-unit check-asan check-compose bench fuzz run format format-check \
	clean deps

all: $(BUILD)/millrace-api $(BUILD)/millrace-worker

$(BUILD)/millrace-api: $(call obj,$(API_SRC) $(COMMON_SRC))
	$(CC) $(CFLAGS) -o $@ $^ $(LDLIBS)

$(BUILD)/millrace-worker: $(call obj,$(WORKER_SRC) $(COMMON_SRC)) $(CU_OBJ)
	$(CC) $(CFLAGS) -o $@ $^ $(LDLIBS) $(CUDA_LIBS)

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

$(BUILD)/obj/%.o: %.cu
	@mkdir -p $(dir $@)
	$(NVCC) $(NVCCFLAGS) -c -o $@ $<

ifeq ($(CUDA),1)
$(CUDA_C_OBJ): CFLAGS += -DMILLRACE_CUDA
endif
$(CUDA_C_OBJ): $(CUDA_STAMP)

# keep objects that pattern chains would delete as intermediates
.SECONDARY:

.SECONDEXPANSION:
$(BUILD)/tests/%: $(BUILD)/obj/tests/%.o $$(call test_deps,obj,tests/%.c) $(CU_OBJ)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -o $@ $^ $(LDLIBS) $(TEST_LIBS) $(CUDA_LIBS)

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
	@$(MAKE) --no-print-directory check-compose
	@$(MAKE) --no-print-directory check

run: deps
	@$(MAKE) --no-print-directory all
	@scripts/run.sh

deps:
	@scripts/deps.sh

# compose/ without a container engine (tests/test_compose.sh): docker-compose
# config, yamllint, dockerfilelint. Installs its tools first when missing:
# Debian packages, and dockerfilelint from npm into build/npm.
DOCKERFILELINT := $(BUILD)/npm/node_modules/.bin/dockerfilelint
check-compose:
	@scripts/deps.sh docker-compose yamllint
	@command -v npm >/dev/null || scripts/deps.sh nodejs npm
	@[ -x $(DOCKERFILELINT) ] || npm install --prefix $(BUILD)/npm --no-audit --no-fund \
		--loglevel=error dockerfilelint@1.8.0
	@tests/test_compose.sh

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

FORMAT_SRC = $(wildcard */*.c */*.h */*/*.c */*/*.h */*/*.cu */*/*.cuh)
format:
	clang-format -i $(FORMAT_SRC)

format-check:
	clang-format --dry-run --Werror $(FORMAT_SRC)

clean:
	rm -rf $(BUILD)

-include $(shell find $(BUILD) -name '*.d' 2>/dev/null)
