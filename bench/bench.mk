# Benchmarks: stock Prosody vs Brisk, micro (bench/<area>.lua, written by each
# module's owner) and end to end (bench/e2e.lua driving a real Prosody with
# the C load generator).  scripts/bench.sh collects everything into
# bench/results/<date>.md and <date>.png (and latest.md/png).
#
#   make bench          full run (< 20 minutes)
#   make bench-quick    short run (< 3 minutes)
#   make bench-e2e      the end-to-end part alone, full size
#   make bench-loadgen  just build the load generator

LOADGEN     := build/bench/loadgen
LOADGEN_SRC := $(wildcard bench/loadgen/*.c)
# Benchmark-only C code (bench/*.c), each its own shared object in
# build/bench/, loaded by the benchmark that needs it; never installed.
BENCH_SOS   := $(patsubst bench/%.c,build/bench/brisk_bench_%.so,$(wildcard bench/*.c))
# Bench-only helpers loaded into the end-to-end benchmark's servers
# (bench/probe/): the memory probe (a Lua C module, mallinfo2 and a counting
# allocator) and the LD_PRELOAD shim of the TLS study.
PROBE       := build/bench/bench_probe.so
TLS_SHIM    := build/bench/tls_shim.so

.PHONY: bench-loadgen bench-sos bench-e2e bench-e2e-quick

bench-loadgen: $(LOADGEN) $(PROBE) $(TLS_SHIM)

# The load generator is a plain program, not a Lua module; it gets its own
# flags (GNU extensions for SOCK_NONBLOCK and friends, libexpat for parsing,
# OpenSSL for its TLS clients).
$(LOADGEN): $(LOADGEN_SRC) bench/bench.mk
	@mkdir -p $(@D)
	$(CC) -std=c11 -Wall -Wextra -Werror -O2 -D_GNU_SOURCE -o $@ $(LOADGEN_SRC) -lexpat -lssl -lcrypto

# A benchmark-only object's extra libraries: BENCH_LIBS_<name>.
BENCH_LIBS_expat_noop := -lexpat

build/bench/brisk_bench_%.so: bench/%.c bench/bench.mk
	@mkdir -p $(@D)
	$(CC) $(CFLAGS) -o $@ $< $(LDFLAGS) $(BENCH_LIBS_$*)

bench-sos: $(BENCH_SOS)

$(PROBE): bench/probe/probe.c bench/bench.mk
	@mkdir -p $(@D)
	$(CC) -std=c11 -Wall -Wextra -Werror -O2 -fPIC -shared $(LUA_CFLAGS) -o $@ $< -ldl

$(TLS_SHIM): bench/probe/tls_shim.c bench/bench.mk
	@mkdir -p $(@D)
	$(CC) -std=c11 -Wall -Wextra -Werror -O2 -fPIC -shared -o $@ $< -ldl

bench: deps all $(LOADGEN) $(BENCH_SOS) $(PROBE) $(TLS_SHIM)
	@scripts/bench.sh

bench-quick: deps all $(LOADGEN) $(BENCH_SOS) $(PROBE) $(TLS_SHIM)
	@scripts/bench.sh --quick

bench-e2e: deps all $(LOADGEN) $(PROBE) $(TLS_SHIM)
	@eval "$$($(MAKE) -s env)"; $(LUA) bench/e2e.lua

bench-e2e-quick: deps all $(LOADGEN) $(PROBE) $(TLS_SHIM)
	@eval "$$($(MAKE) -s env)"; $(LUA) bench/e2e.lua --quick
