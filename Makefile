# Brisk — build, test, run and benchmark.
#
# Every folder modules/<name>/ becomes one shared object, build/brisk/<name>.so,
# loaded in Lua as require "brisk.<name>". A module's extra libraries and flags
# live in modules/<name>/module.mk (LIBS_<name> = ..., CFLAGS_<name> = ...), so
# adding a module never means editing this file.

LUA_VERSION := 5.4
LUA         := lua$(LUA_VERSION)
LUA_CFLAGS  := $(shell pkg-config --cflags lua$(LUA_VERSION) 2>/dev/null || echo -I/usr/include/lua$(LUA_VERSION))

CC      ?= cc
OPT     ?= -O2
SAN     ?=
BUILD   ?= build
CFLAGS  := -std=c11 -Wall -Wextra -Werror $(OPT) -fPIC -fvisibility=hidden -D_POSIX_C_SOURCE=200809L \
           -Iinclude $(LUA_CFLAGS) $(SAN) $(EXTRA_CFLAGS)
LDFLAGS := -shared $(SAN)

MODULES := $(notdir $(patsubst %/,%,$(wildcard modules/*/)))
-include $(wildcard modules/*/module.mk)

SOS := $(foreach m,$(MODULES),$(BUILD)/brisk/$(m).so)

INST_LIBDIR ?= /usr/local/lib/lua/$(LUA_VERSION)
INST_LUADIR ?= /usr/local/share/lua/$(LUA_VERSION)

.PHONY: all env deps install test test-asan check analyze run bench bench-quick fuzz soak clean help
all: $(SOS)

# One rule per module: every .c in its folder, compiled together into one .so.
define module_rule
$(BUILD)/brisk/$(1).so: $(wildcard modules/$(1)/*.c) $(wildcard modules/$(1)/*.h) $(wildcard include/*.h) $(wildcard modules/$(1)/module.mk)
	@mkdir -p $$(@D)
	$$(CC) $$(CFLAGS) $$(CFLAGS_$(1)) -o $$@ $(wildcard modules/$(1)/*.c) $$(LDFLAGS) $$(LIBS_$(1))
endef
$(foreach m,$(MODULES),$(eval $(call module_rule,$(m))))

# Used by `luarocks make` (see the rockspec), or directly for a system-wide
# install: the C modules into INST_LIBDIR/brisk/, all Lua glue into INST_LUADIR.
install: all
	install -d $(INST_LIBDIR)/brisk $(INST_LUADIR)
	install -m 644 $(SOS) $(INST_LIBDIR)/brisk/
	cd lualib && find . -name '*.lua' -exec install -D -m 644 {} $(INST_LUADIR)/{} \;

# Which Prosody the specs, `make run` and the benchmarks use: Debian 12's
# system 0.12 (the default while Debian 12 is the base), or 13, unpacked
# from bookworm-backports into build/prosody-13/ by scripts/deps.sh.
# make test runs both versions unless PROSODY names one
# (and its sanitizer pass runs on 13 only: see the test target).
ifeq ($(origin PROSODY),undefined)
PROSODY_VERSIONS := 0.12 13
ASAN_PROSODY_VERSIONS := 13
else
PROSODY_VERSIONS := $(PROSODY)
ASAN_PROSODY_VERSIONS := $(PROSODY)
endif
PROSODY ?= 0.12
ROOT := $(abspath .)
PROSODY13_DIR := $(ROOT)/build/prosody-13
ifeq ($(PROSODY),0.12)
PROSODY_LIB := /usr/lib/prosody
PROSODY_BIN := /usr/bin
else ifeq ($(PROSODY),13)
PROSODY_LIB := $(PROSODY13_DIR)/root/usr/lib/prosody
PROSODY_BIN := $(PROSODY13_DIR)/bin
else
$(error PROSODY must be 0.12 or 13, not '$(PROSODY)')
endif

# Shell exports so that a plain lua5.4 finds brisk.* (C), the Lua glue and
# the chosen Prosody's libraries, and so that prosody/prosodyctl are that
# Prosody's:  eval "$(make -s env)"  or  eval "$(make -s env PROSODY=13)".
# Prosody 13's libraries also answer to prosody.* names once its loader.lua
# is loaded (spec/helpers/init.lua does that).
env:
	@echo 'export LUA_PATH="$(ROOT)/lualib/?.lua;$(ROOT)/lualib/?/init.lua;$(ROOT)/?.lua;$(PROSODY_LIB)/?.lua;/usr/share/lua/$(LUA_VERSION)/?.lua;/usr/share/lua/$(LUA_VERSION)/?/init.lua;;"'
	@echo 'export LUA_CPATH="$(ROOT)/$(BUILD)/?.so;$(PROSODY_LIB)/?.so;/usr/lib/x86_64-linux-gnu/lua/$(LUA_VERSION)/?.so;;"'
	@echo 'export BRISK_PROSODY="$(PROSODY)" BRISK_PROSODY_LIB="$(PROSODY_LIB)" BRISK_PROSODY_BIN="$(PROSODY_BIN)"'
	@$(if $(filter 13,$(PROSODY)),echo 'export PATH="$(PROSODY_BIN):$$PATH"',true)

# Debian packages the build, the specs and the benchmarks need; installed
# only when missing, so a developer's machine is left alone.
deps:
	@scripts/deps.sh

# Everything CI runs: every spec and Prosody's own specs (spec/upstream/,
# against stock and Brisk) on both Prosody versions (or the one PROSODY
# names) against the normal build, the same against an ASan/UBSan build on
# Prosody 13 (ASAN_PROSODY_VERSIONS), a short bounded pass of every fuzz
# target, clang's static analyzer over every C file, then one total line. A
# failing pass does not stop the later ones: the total says what failed, and
# its exit status is the verdict.
#
# CI has 25 minutes, so the sanitizer pass runs on one version (the C cores
# run the same code on both; 13, whose libraries differ most from what Brisk
# was first written against), and the live soak runs its full 60 s in the
# first pass and 20 s in the others (BRISK_SOAK_SECONDS).
test: deps
	@mkdir -p build && rm -f build/test-results
	@$(MAKE) --no-print-directory all
	@soak=60; for v in $(PROSODY_VERSIONS); do \
	    PROSODY=$$v BRISK_SOAK_SECONDS=$${BRISK_SOAK_SECONDS:-$$soak} BRISK_RESULTS=build/test-results scripts/run-specs.sh $(BUILD); \
	    PROSODY=$$v BRISK_RESULTS=build/test-results scripts/run-upstream-specs.sh $(BUILD); \
	    soak=20; \
	done; true
	@BRISK_SOAK_SECONDS=$${BRISK_SOAK_SECONDS:-20} BRISK_RESULTS=build/test-results $(MAKE) --no-print-directory test-asan || true
	@BRISK_RESULTS=build/test-results $(MAKE) --no-print-directory fuzz-quick || true
	@BRISK_RESULTS=build/test-results ANALYZE_CFLAGS="$(CFLAGS)" scripts/analyze.sh || true
	@cat build/test-results
	@awk '{p += $$2; f += $$3} END {printf "total: %d passed, %d failed\n", p, f; exit f > 0}' build/test-results

# The same specs against shared objects built with ASan and UBSan, on
# ASAN_PROSODY_VERSIONS (13; the one PROSODY names if it names one).
test-asan: deps
	@$(MAKE) --no-print-directory BUILD=build/asan OPT="-O1 -g -fno-omit-frame-pointer" \
	    SAN="-fsanitize=address,undefined -fno-sanitize-recover=undefined" all
	@status=0; for v in $(ASAN_PROSODY_VERSIONS); do \
	    PROSODY=$$v BRISK_ASAN=1 scripts/run-specs.sh build/asan || status=1; \
	    PROSODY=$$v BRISK_ASAN=1 scripts/run-upstream-specs.sh build/asan || status=1; \
	done; exit $$status

# The fast loop (under a minute): unit and differential specs that need no
# live server, on one Prosody (PROSODY, default 0.12), plain build.
check: all
	@scripts/check.sh $(BUILD)

# clang's static analyzer (clang --analyze), with the build's flags, over
# every C file of the modules ANALYZE names (default: all, e.g.
# make analyze ANALYZE=store). Any report fails.
ANALYZE ?= $(MODULES)
analyze:
	@ANALYZE_CFLAGS="$(CFLAGS)" scripts/analyze.sh $(ANALYZE)

run: deps all
	@scripts/run-server.sh

# The long reliability run (docs/reliability.md): SOAK_SECONDS (default 120)
# of live mixed load, then the LeakSanitizer workload (SOAK_LSAN_ROUNDS
# rounds); make soak SOAK_SECONDS=14400 is a release soak of four hours.
# make test runs the bounded version: spec/reliability_soak_spec.lua
# (BRISK_SOAK_SECONDS, default 60) in both spec passes, with the
# LeakSanitizer workload in the ASan pass.
SOAK_SECONDS      ?= 120
SOAK_LSAN_ROUNDS  ?= 20000

soak: deps all
	@SOAK_SECONDS=$(SOAK_SECONDS) SOAK_LSAN_ROUNDS=$(SOAK_LSAN_ROUNDS) scripts/soak.sh

-include bench/bench.mk
-include fuzz/fuzz.mk

clean:
	rm -rf build

help:
	@echo "make            build every brisk.* shared object into $(BUILD)/"
	@echo "make run        start a real Prosody on loopback with every Brisk module (PROSODY=13 for 13)"
	@echo "make test       install what is missing, build, run every spec on Prosody 0.12 and 13 (also under ASan/UBSan)"
	@echo "make test-asan  the specs alone, against sanitizer builds"
	@echo "make check      unit and differential specs only, one Prosody, in under a minute"
	@echo "make bench      stock vs Brisk benchmarks; make bench-quick for a short look"
	@echo "make fuzz       libFuzzer targets for a longer bounded time"
	@echo "make analyze    clang --analyze over the modules' C files (ANALYZE=store for one module)"
	@echo "make soak       live mixed-load soak (SOAK_SECONDS) + LeakSanitizer workload"
	@echo "eval \"\$$(make -s env)\"   let a plain lua5.4 find brisk.* and Prosody"
