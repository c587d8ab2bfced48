# llmux - plain GNU make with pkg-config.
#   make            release build of bin/llmux, bin/llmux-sim
#   make run        start three llmux-sim nodes and llmux on :8000
#   make test       unit + end-to-end tests (installs Debian deps when root)
#   make help       every target

MODE ?= release
BUILD := build/$(MODE)
PKGS := libuv jansson
PYTHON := /usr/bin/python3

CC ?= cc
ifeq ($(origin CC),default)
CC := gcc
endif

WARN := -Wall -Wextra -Wshadow -Wstrict-prototypes -Wmissing-prototypes -Wformat=2 -Wvla \
        -Wno-unused-parameter
ifeq ($(CI),true)
WARN += -Werror
endif
CFLAGS_release := -O2 -g -DNDEBUG
CFLAGS_debug := -O0 -g3
CFLAGS_asan := -O1 -g -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined
LDFLAGS_asan := -fsanitize=address,undefined
CFLAGS_tsan := -O1 -g -fsanitize=thread -fno-omit-frame-pointer
LDFLAGS_tsan := -fsanitize=thread

PKG_CFLAGS = $(shell pkg-config --cflags $(PKGS) 2>/dev/null)
PKG_LIBS = $(shell pkg-config --libs $(PKGS) 2>/dev/null) -lhttp_parser -lpthread -lm
CFLAGS := -std=gnu11 -pthread -D_GNU_SOURCE $(WARN) $(CFLAGS_$(MODE)) $(PKG_CFLAGS) -MMD -MP \
          $(EXTRA_CFLAGS)
LDFLAGS := -pthread $(LDFLAGS_$(MODE)) $(EXTRA_LDFLAGS)

ifeq ($(V),1)
Q :=
else
Q := @
endif

LIB_SRC := $(filter-out src/main.c,$(wildcard src/*/*.c))
LIB_OBJ := $(LIB_SRC:%.c=$(BUILD)/%.o)
LIB := $(BUILD)/liblx.a
MAIN_OBJ := $(BUILD)/src/main.o
SIM_OBJ := $(patsubst %.c,$(BUILD)/%.o,$(wildcard sim/*.c))
BENCH_OBJ := $(patsubst %.c,$(BUILD)/%.o,$(wildcard bench/*.c))
UNIT_SRC := $(wildcard tests/unit/test_*.c)
FUZZ_NAMES := $(patsubst tests/fuzz/fuzz_%.c,%,$(wildcard tests/fuzz/fuzz_*.c))
REPLAY_BIN := $(FUZZ_NAMES:%=$(BUILD)/fuzz-replay/%)
FUZZ_BIN := $(FUZZ_NAMES:%=build/fuzz/fuzz_%)
FUZZ_SECONDS ?= 20
UNIT_BIN := $(UNIT_SRC:tests/unit/%.c=$(BUILD)/tests/%)
# Linked into every program of a mode: under TSan, the hook that shows it the
# descriptors libuv closes (tests/tsan/syscall_close.c).
MODE_OBJ_tsan := $(BUILD)/tests/tsan/syscall_close.o
MODE_OBJ := $(MODE_OBJ_$(MODE))

# Release binaries land in bin/; other modes keep theirs under build/<mode>/bin.
ifeq ($(MODE),release)
BINDIR := bin
else
BINDIR := $(BUILD)/bin
endif
BINS := $(BINDIR)/llmux $(BINDIR)/llmux-sim $(BINDIR)/llmux-bench

.PHONY: all run test test-unit test-e2e test-fuzz-replay asan asan-test tsan tsan-test attack soak soak-asan chaos fuzz fuzz-smoke bench bench-quick bench-profile bench-prefix bench-resume format lint deps clean help
.SECONDARY:

all: $(BINS)

$(BUILD)/%.o: %.c
	@mkdir -p $(dir $@)
	@$(if $(Q),echo "  CC      $<")
	$(Q)$(CC) $(CFLAGS) -c -o $@ $<

$(LIB): $(LIB_OBJ)
	@mkdir -p $(dir $@)
	$(Q)rm -f $@ && ar rcs $@ $^

$(BINDIR)/llmux: $(MAIN_OBJ) $(LIB) $(MODE_OBJ)
	@mkdir -p $(dir $@)
	@$(if $(Q),echo "  LD      $@")
	$(Q)$(CC) $(LDFLAGS) -o $@ $^ $(PKG_LIBS)

$(BINDIR)/llmux-sim: $(SIM_OBJ) $(LIB) $(MODE_OBJ)
	@mkdir -p $(dir $@)
	@$(if $(Q),echo "  LD      $@")
	$(Q)$(CC) $(LDFLAGS) -o $@ $^ $(PKG_LIBS)

$(BINDIR)/llmux-bench: $(BENCH_OBJ) $(LIB) $(MODE_OBJ)
	@mkdir -p $(dir $@)
	@$(if $(Q),echo "  LD      $@")
	$(Q)$(CC) $(LDFLAGS) -o $@ $^ $(PKG_LIBS)

$(BUILD)/tests/%: $(BUILD)/tests/unit/%.o $(LIB) $(MODE_OBJ)
	@mkdir -p $(dir $@)
	$(Q)$(CC) $(LDFLAGS) -o $@ $^ $(PKG_LIBS) -lcmocka

# Unit tests of llmux-sim's modules link the sim objects they test.
$(BUILD)/tests/test_sim_prompt: $(BUILD)/tests/unit/test_sim_prompt.o $(BUILD)/sim/prompt.o \
                                $(LIB) $(MODE_OBJ)
	@mkdir -p $(dir $@)
	$(Q)$(CC) $(LDFLAGS) -o $@ $^ $(PKG_LIBS) -lcmocka

# Corpus replay: each fuzz target linked with a plain main, built like the tests.
$(BUILD)/fuzz-replay/%: $(BUILD)/tests/fuzz/fuzz_%.o $(BUILD)/tests/fuzz/replay.o $(LIB)
	@mkdir -p $(dir $@)
	$(Q)$(CC) $(LDFLAGS) -o $@ $^ $(PKG_LIBS)

$(BUILD)/tests/fuzz/%.o: tests/fuzz/%.c
	@mkdir -p $(dir $@)
	$(Q)$(CC) $(CFLAGS) -Isrc -c -o $@ $<

# libFuzzer builds (clang); the test headers they include are prerequisites.
build/fuzz/fuzz_%: tests/fuzz/fuzz_%.c $(LIB_SRC) $(wildcard tests/fuzz/*.h tests/*.h)
	@mkdir -p $(dir $@)
	$(Q)clang -g -O1 -fsanitize=fuzzer,address,undefined -std=gnu11 -D_GNU_SOURCE -Isrc \
	    $(PKG_CFLAGS) -o $@ $< $(LIB_SRC) $(PKG_LIBS)

fuzz:
	@scripts/deps.sh fuzz
	@$(MAKE) --no-print-directory $(FUZZ_BIN)

# Each target for FUZZ_SECONDS on a scratch copy of its corpus.
fuzz-smoke: fuzz
	@set -e; for n in $(FUZZ_NAMES); do \
	    tmp=$$(mktemp -d); cp tests/fuzz/corpus/$$n/* $$tmp/ 2>/dev/null || true; \
	    echo "== fuzz $$n ($(FUZZ_SECONDS) s)"; \
	    build/fuzz/fuzz_$$n -max_total_time=$(FUZZ_SECONDS) -timeout=10 -print_final_stats=1 $$tmp \
	        >$$tmp.log 2>&1 || { tail -40 $$tmp.log; exit 1; }; \
	    grep -E "number_of_executed_units|peak_rss" $$tmp.log; rm -rf $$tmp $$tmp.log; done

test-fuzz-replay: $(REPLAY_BIN)
	@set -e; for n in $(FUZZ_NAMES); do $(BUILD)/fuzz-replay/$$n tests/fuzz/corpus/$$n; done

deps:
	@scripts/deps.sh

test: deps
	@$(MAKE) --no-print-directory all
	@$(MAKE) --no-print-directory test-unit
	@$(MAKE) --no-print-directory test-e2e

test-unit: $(UNIT_BIN) $(REPLAY_BIN)
	@scripts/check-layers
	@set -e; for t in $(UNIT_BIN); do echo "== $$t"; $$t; done
	@$(MAKE) --no-print-directory test-fuzz-replay

test-e2e: $(BINS)
	LLMUX_BIN_DIR=$(abspath $(BINDIR)) $(PYTHON) -m pytest -q tests/e2e $(PYTEST_ARGS)

# The whole suite under AddressSanitizer + UndefinedBehaviorSanitizer.
asan-test: deps
	@$(MAKE) --no-print-directory MODE=asan test-unit test-e2e

asan:
	@$(MAKE) --no-print-directory MODE=asan all

# ThreadSanitizer: the tests where threads meet (two workers, the control
# thread's health checks, scrapes, admin changes and reloads against traffic);
# not the CLI, deploy, status-page (Chromium) or bench-client tests (~3 min).
# A report stops the process (halt_on_error) and fails the test; suppressions
# only for proven false positives, each explained in tests/tsan/tsan.supp.
TSAN_E2E ?= test_load.py test_admission.py test_admin.py test_reload.py test_resilience.py \
            test_routing.py test_proxy.py test_stream.py test_access_log.py test_errors.py \
            test_http.py
TSAN_OPTIONS_ALL := halt_on_error=1 second_deadlock_stack=1 suppressions=$(abspath tests/tsan/tsan.supp)
tsan:
	@$(MAKE) --no-print-directory MODE=tsan all

tsan-test: deps
	@$(MAKE) --no-print-directory MODE=tsan all build/tsan/tests/test_admit
	TSAN_OPTIONS="$(TSAN_OPTIONS_ALL) $$TSAN_OPTIONS" build/tsan/tests/test_admit
	TSAN_OPTIONS="$(TSAN_OPTIONS_ALL) $$TSAN_OPTIONS" LLMUX_BIN_DIR=$(abspath build/tsan/bin) \
	    $(PYTHON) -m pytest -q $(addprefix tests/e2e/,$(TSAN_E2E)) $(PYTEST_ARGS)

# Benchmarks (not tests): the relay check, the peer comparison with nginx and
# HAProxy, and the routing-quality experiment. Figures go to docs/BENCHMARKS.md.
bench: deps all
	bench/relay.sh
	bench/compare
	bench/routing

bench-quick: deps all
	bench/compare --quick
	bench/routing --quick

bench-profile: deps all
	bench/profile

# Micro-benchmarks of one mechanism each (C programs of their own, not part
# of llmux-bench): cache_aware's block index per request and its memory
# (bench/prefix), stream resume's cost per relayed event (bench/resume).
$(BUILD)/bench/prefix_cost: $(BUILD)/bench/prefix/prefix_cost.o $(LIB) $(MODE_OBJ)
$(BUILD)/bench/note_cost: $(BUILD)/bench/resume/note_cost.o $(LIB) $(MODE_OBJ)
$(BUILD)/bench/prefix_cost $(BUILD)/bench/note_cost:
	@mkdir -p $(dir $@)
	@$(if $(Q),echo "  LD      $@")
	$(Q)$(CC) $(LDFLAGS) -o $@ $^ $(PKG_LIBS)

bench-prefix: $(BUILD)/bench/prefix_cost
	$(BUILD)/bench/prefix_cost

bench-resume: $(BUILD)/bench/note_cost
	$(BUILD)/bench/note_cost

# Robustness runs (not tests): slowhttptest's slow attacks on llmux and HAProxy
# (~10 min; ATTACK_ARGS=--quick: ~3 min), a soak of mixed traffic with node
# restarts that fails on RSS growth or leaked descriptors (1 h; SOAK_ARGS=
# "--minutes 10"); soak-asan soaks the ASan+UBSan build; chaos kills a node
# every few seconds under streaming load, with stream resume on and off
# (~2.5 min; CHAOS_ARGS=--quick: ~1 min). See docs/BENCHMARKS.md.
attack: deps all
	bench/attack $(ATTACK_ARGS)

soak: deps all
	bench/soak $(SOAK_ARGS)

soak-asan: deps
	@$(MAKE) --no-print-directory MODE=asan all
	bench/soak --bin-dir build/asan/bin $(SOAK_ARGS)

chaos: deps all
	bench/chaos $(CHAOS_ARGS)

run: deps all
	@scripts/run.sh

format:
	clang-format -i $(wildcard src/*.c src/*/*.c src/*/*.h sim/*.c sim/*.h tests/unit/*.c)

lint:
	cppcheck --quiet --enable=warning,performance,portability --error-exitcode=1 \
	    --suppress=missingIncludeSystem -Isrc src sim bench
	clang-tidy $(LIB_SRC) src/main.c -- $(CFLAGS)

clean:
	rm -rf build bin

help:
	@echo "make [MODE=release|debug|asan|tsan] [V=1] TARGET"
	@echo "  all         build bin/llmux and bin/llmux-sim (default)"
	@echo "  run         build, start 3 llmux-sim nodes and llmux on :8000"
	@echo "  test        install deps, build, run unit and end-to-end tests"
	@echo "  test-unit   cmocka unit tests"
	@echo "  test-e2e    pytest end-to-end tests against real processes"
	@echo "  asan        build with ASan+UBSan under build/asan"
	@echo "  fuzz        libFuzzer builds of tests/fuzz/fuzz_*.c (clang) under build/fuzz"
	@echo "  fuzz-smoke  run each fuzz target FUZZ_SECONDS (default 20) on its corpus"
	@echo "  asan-test   unit + e2e tests under ASan+UBSan"
	@echo "  tsan        build with ThreadSanitizer under build/tsan"
	@echo "  tsan-test   the multi-threaded e2e tests (TSAN_E2E) and test_admit under TSan"
	@echo "  deps        install missing Debian packages (root) or say what to install"
	@echo "  bench       bench/relay.sh, bench/compare (vs nginx, HAProxy), bench/routing (~10 min)"
	@echo "  bench-quick the comparison and routing benchmarks in ~2 min; bench-profile: callgrind"
	@echo "  bench-prefix the block index's cost per request (1k, 32k tokens) and memory (~10 s)"
	@echo "  attack      slowhttptest (slowloris, slow body, slow read) on llmux and HAProxy (~10 min;"
	@echo "              ATTACK_ARGS=--quick ~3 min)"
	@echo "  soak        1 h of mixed traffic and node restarts; fails on RSS growth or fd leaks"
	@echo "              (SOAK_ARGS=\"--minutes 10\"); soak-asan: the same on the ASan build"
	@echo "  chaos       streams through llmux while a node is killed every 4 s, stream resume on"
	@echo "              and off: broken streams, resumes, text checked (~2.5 min; CHAOS_ARGS=--quick)"
	@echo "  format lint clean"

-include $(shell find build -name '*.d' 2>/dev/null)
