# Clonegate: one GNU Makefile builds the daemon, the demo clone, the tests.
#
#   make            build/clonegate and build/democlone
#   make deps       apt-get install what the build, tests and `make run` need
#   make run        deps + build, then redis-server, two demo clones, the proxy
#   make test       deps + build, unit (cmocka) and integration (pytest-3) suites
#   make asan       both suites under AddressSanitizer + UBSan (build/asan/)
#   make fuzz       libFuzzer targets (clang); FUZZ_SECONDS=N runs each N s
#   make bench      tests/bench: Clonegate against HAProxy, nginx, Varnish (QUICK=1: ~2 min)
#   make bench-shared  ../shared/bench/run against this tree (QUICK=1: ~2 min)
#   make install    PREFIX=/usr/local DESTDIR=

CC       ?= cc
BUILD    ?= build
PREFIX   ?= /usr/local
DESTDIR  ?=
VERSION  := 0.1.0

LLHTTP_SRC := /usr/share/llhttp
LLHTTP_INC := /usr/share/include/llhttp

WARN     := -Wall -Wextra -Werror -Wshadow -Wstrict-prototypes -Wmissing-prototypes -Wformat=2 \
            -Wundef -Wpointer-arith -Wwrite-strings -Wcast-qual -Wvla
OPT      ?= -O2 -g
SAN      ?=
CFLAGS_BASE := -std=c11 -D_GNU_SOURCE -DCLONEGATE_VERSION='"$(VERSION)"' -DLLHTTP_STRICT_MODE=1 \
               -I$(LLHTTP_INC) -Iproxy
CFLAGS   := $(CFLAGS_BASE) $(OPT) $(SAN) $(WARN) $(EXTRA_CFLAGS)
# llhttp scans header values with SSE4.2 when the compiler may use it; the
# build runs where the binary runs, so ask this CPU.
LLHTTP_SIMD := $(shell grep -qw sse4_2 /proc/cpuinfo 2>/dev/null && echo -msse4.2)
LLFLAGS  := $(CFLAGS_BASE) $(OPT) $(SAN) $(LLHTTP_SIMD) -Wall -Wextra -Werror -Wno-unused-parameter \
            $(if $(LLHTTP_SIMD),-Wno-unused-variable)
LIBS     := -levent_openssl -levent_pthreads -levent_core -levent_extra -lhiredis -linih \
            -lssl -lcrypto -lpthread -lm
LDFLAGS  += $(SAN)

# Every Debian package the build, the tests and `make run` use.
DEPS_PKGS := gcc make pkg-config libevent-dev libssl-dev libhiredis-dev libinih-dev \
             libcmocka-dev node-llhttp redis-server python3 python3-pytest clang \
             clang-format curl man-db groff-base chromium prometheus openssl
BENCH_PKGS := wrk haproxy nginx-light varnish redis-server gnuplot-nox openssl

PROXY_SRCS := $(wildcard proxy/*.c)
PROXY_LIB_SRCS := $(filter-out proxy/main.c,$(PROXY_SRCS))
PROXY_OBJS := $(PROXY_SRCS:proxy/%.c=$(BUILD)/proxy/%.o)
PROXY_LIB_OBJS := $(PROXY_LIB_SRCS:proxy/%.c=$(BUILD)/proxy/%.o)
LLHTTP_OBJS := $(BUILD)/llhttp/api.o $(BUILD)/llhttp/http.o $(BUILD)/llhttp/llhttp.o
UNIT_SRCS  := $(wildcard tests/unit/test_*.c)
UNIT_BINS  := $(UNIT_SRCS:tests/unit/%.c=$(BUILD)/tests/%)
FUZZ_SRCS  := $(wildcard tests/fuzz/fuzz_*.c)
FUZZ_SECONDS ?= 0

.PHONY: all deps bench-deps run test unit integration configcheck asan fuzz fuzz-replay bench \
        install clean format bench-shared

all: $(BUILD)/clonegate $(BUILD)/democlone

$(BUILD)/proxy/%.o: proxy/%.c $(wildcard proxy/*.h) | $(BUILD)/proxy
	$(CC) $(CFLAGS) -c $< -o $@

$(BUILD)/llhttp/%.o: $(LLHTTP_SRC)/%.c | $(BUILD)/llhttp
	$(CC) $(LLFLAGS) -c $< -o $@

$(BUILD)/libclonegate.a: $(PROXY_LIB_OBJS) $(LLHTTP_OBJS)
	rm -f $@ && ar rcs $@ $^

$(BUILD)/clonegate: $(BUILD)/proxy/main.o $(BUILD)/libclonegate.a
	$(CC) $(LDFLAGS) -o $@ $^ $(LIBS)

$(BUILD)/democlone: examples/democlone.c | $(BUILD)
	$(CC) $(CFLAGS) -o $@ $< $(LDFLAGS) -levent_core -levent_extra

$(BUILD)/tests/test_%: tests/unit/test_%.c $(BUILD)/libclonegate.a | $(BUILD)/tests
	$(CC) $(CFLAGS) -o $@ $< $(BUILD)/libclonegate.a $(LDFLAGS) $(LIBS) -lcmocka

$(BUILD) $(BUILD)/proxy $(BUILD)/llhttp $(BUILD)/tests $(BUILD)/fuzz:
	mkdir -p $@

# Installs only what is missing, so it is cheap when everything is there.
deps:
	@missing=$$(for p in $(DEPS_PKGS); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null \
	    | grep -q 'install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	    echo "installing:" $$missing; \
	    SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	    $$SUDO apt-get update -qq && \
	    DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends \
	        $$missing; \
	fi

bench-deps:
	@$(MAKE) --no-print-directory deps DEPS_PKGS="$(BENCH_PKGS)"

run: deps all
	examples/run-demo.sh

unit: $(UNIT_BINS)
	@set -e; for t in $(UNIT_BINS); do echo "== $$t"; $$t; done

# Every shipped ini must pass `clonegate -t`.
configcheck: $(BUILD)/clonegate
	@set -e; for f in config/*.ini examples/*.ini; do \
	    [ -f "$$f" ] || continue; printf '%s: ' "$$f"; $(BUILD)/clonegate -t -c $$f; done

integration: $(BUILD)/clonegate $(BUILD)/democlone
	CLONEGATE=$(abspath $(BUILD)/clonegate) DEMOCLONE=$(abspath $(BUILD)/democlone) \
	    pytest-3 -q -p no:cacheprovider tests/integration $(PYTEST_ARGS)

test: deps
	@$(MAKE) --no-print-directory all
	@$(MAKE) --no-print-directory unit configcheck fuzz-replay integration

ASAN_SAN := -fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer
# A small quarantine keeps freed memory from inflating the proxy's peak RSS,
# which the memory-bound tests measure.
asan: deps
	@ASAN_OPTIONS=quarantine_size_mb=8:detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1 \
	    $(MAKE) --no-print-directory BUILD=build/asan OPT="-O1 -g" SAN="$(ASAN_SAN)" \
	    EXTRA_CFLAGS=-DCLONEGATE_DEBUG all unit integration

FUZZ_SAN := -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=all
FUZZ_BINS := $(FUZZ_SRCS:tests/fuzz/%.c=build/fuzz/%)
# Replays the seed corpus through each target once (plain build, no clang needed).
fuzz-replay: $(FUZZ_SRCS:tests/fuzz/%.c=$(BUILD)/fuzz/replay_%)
	@set -e; for t in $^; do n=$$(basename $$t); n=$${n#replay_}; \
	    echo "== $$t"; $$t tests/fuzz/corpus/$$n/*; done

$(BUILD)/fuzz/replay_%: tests/fuzz/%.c tests/fuzz/replay_main.c tests/fuzz/fuzz_common.h \
                      $(BUILD)/libclonegate.a | $(BUILD)/fuzz
	$(CC) $(CFLAGS) -o $@ $< tests/fuzz/replay_main.c $(BUILD)/libclonegate.a $(LDFLAGS) $(LIBS)

fuzz: deps
	@$(MAKE) --no-print-directory BUILD=build/fuzzlib CC=clang OPT="-O1 -g" \
	    SAN="-fsanitize=fuzzer-no-link,address,undefined" build/fuzzlib/libclonegate.a
	@set -e; mkdir -p build/fuzz; for s in $(FUZZ_SRCS); do n=$$(basename $$s .c); \
	    clang $(CFLAGS_BASE) -O1 -g $(FUZZ_SAN) -o build/fuzz/$$n $$s build/fuzzlib/libclonegate.a \
	        $(LIBS); \
	    if [ "$(FUZZ_SECONDS)" != 0 ]; then mkdir -p build/fuzz/corpus-$$n; \
	        build/fuzz/$$n -max_total_time=$(FUZZ_SECONDS) -dict=tests/fuzz/http.dict \
	            build/fuzz/corpus-$$n tests/fuzz/corpus/$$n; fi; done

# Options come from the environment or the command line: QUICK=1, WORKERS, ROUNDS,
# DURATION, ONLY, CONTENDERS, KEEP=1, BENCH_CPUS, LOAD_CPUS (see README.md, Benchmark).
bench: bench-deps all
	QUICK='$(QUICK)' WORKERS='$(WORKERS)' ROUNDS='$(ROUNDS)' DURATION='$(DURATION)' \
	    ONLY='$(ONLY)' CONTENDERS='$(CONTENDERS)' KEEP='$(KEEP)' BENCH_CPUS='$(BENCH_CPUS)' \
	    LOAD_CPUS='$(LOAD_CPUS)' CLONEGATE='$(abspath $(BUILD)/clonegate)' \
	    python3 tests/bench/bench.py --out $(BUILD)/bench

bench-shared: bench-deps all
	../shared/bench/run --project . $(if $(QUICK),--quick,)

install: $(BUILD)/clonegate
	install -D -m 755 $(BUILD)/clonegate $(DESTDIR)$(PREFIX)/bin/clonegate
	install -D -m 644 man/clonegate.8 $(DESTDIR)$(PREFIX)/share/man/man8/clonegate.8
	install -D -m 644 man/clonegate.ini.5 $(DESTDIR)$(PREFIX)/share/man/man5/clonegate.ini.5
	install -D -m 644 config/clonegate.ini $(DESTDIR)$(PREFIX)/share/doc/clonegate/clonegate.ini

format:
	clang-format -i proxy/*.c proxy/*.h tests/unit/*.c examples/*.c tests/fuzz/*.c

clean:
	rm -rf build
