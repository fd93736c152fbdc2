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

.PHONY: all env deps install test test-asan run bench bench-quick fuzz soak clean help
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

# Shell exports so that a plain lua5.4 finds brisk.* (C), the Lua glue and
# Debian's Prosody libraries:  eval "$(make -s env)"
ROOT := $(abspath .)
env:
	@echo 'export LUA_PATH="$(ROOT)/lualib/?.lua;$(ROOT)/lualib/?/init.lua;$(ROOT)/?.lua;/usr/lib/prosody/?.lua;/usr/share/lua/$(LUA_VERSION)/?.lua;/usr/share/lua/$(LUA_VERSION)/?/init.lua;;"'
	@echo 'export LUA_CPATH="$(ROOT)/$(BUILD)/?.so;/usr/lib/prosody/?.so;/usr/lib/x86_64-linux-gnu/lua/$(LUA_VERSION)/?.so;;"'

# Debian packages the build, the specs and the benchmarks need; installed
# only when missing, so a developer's machine is left alone.
deps:
	@scripts/deps.sh

# Everything CI runs: specs against the normal build, the same specs under
# ASan/UBSan, a short bounded pass of every fuzz target, then one total line.
test: deps
	@mkdir -p build && rm -f build/test-results
	@$(MAKE) --no-print-directory all
	@BRISK_RESULTS=build/test-results scripts/run-specs.sh $(BUILD)
	@BRISK_RESULTS=build/test-results $(MAKE) --no-print-directory test-asan
	@BRISK_RESULTS=build/test-results $(MAKE) --no-print-directory fuzz-quick
	@awk '{p += $$2; f += $$3} END {printf "total: %d passed, %d failed\n", p, f; exit f > 0}' build/test-results

# The same specs against shared objects built with ASan and UBSan.
test-asan: deps
	@$(MAKE) --no-print-directory BUILD=build/asan OPT="-O1 -g -fno-omit-frame-pointer" \
	    SAN="-fsanitize=address,undefined -fno-sanitize-recover=undefined" all
	@BRISK_ASAN=1 scripts/run-specs.sh build/asan

run: deps all
	@scripts/run-server.sh

-include bench/bench.mk
-include fuzz/fuzz.mk
-include soak/soak.mk

clean:
	rm -rf build

help:
	@echo "make            build every brisk.* shared object into $(BUILD)/"
	@echo "make run        start a real Prosody on loopback with every Brisk module"
	@echo "make test       install what is missing, build, run every spec (also under ASan/UBSan)"
	@echo "make test-asan  the specs alone, against sanitizer builds"
	@echo "make bench      stock vs Brisk benchmarks; make bench-quick for a short look"
	@echo "make fuzz       libFuzzer targets for a longer bounded time"
	@echo "make soak       live mixed-load soak (SOAK_SECONDS) + LeakSanitizer workload"
	@echo "eval \"\$$(make -s env)\"   let a plain lua5.4 find brisk.* and Prosody"
