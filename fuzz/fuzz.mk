# fuzz/fuzz.mk — libFuzzer targets (included by the top-level Makefile).
#
# Every fuzz/<module>_<what>_fuzz.c is linked with all of modules/<module>/*.c,
# that module's LIBS_<module> and Lua, under ASan and UBSan, into
# build/fuzz/<module>_<what>_fuzz. Seeds and regression inputs (every crash
# ever found) live in fuzz/corpus/<module>_<what>_fuzz/; new inputs the fuzzer
# finds go to build/fuzz/corpus/, never into the checkout.
#
#   make fuzz                FUZZ_SECONDS (default 300) per target
#   make fuzz-quick          a short pass (FUZZ_QUICK_SECONDS, default 12), run by make test

FUZZ_CC            ?= clang
FUZZ_SECONDS       ?= 300
FUZZ_QUICK_SECONDS ?= 12
FUZZ_CFLAGS := -std=c11 -Wall -Wextra -Werror -g -O1 -D_POSIX_C_SOURCE=200809L \
               -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined \
               -Iinclude $(LUA_CFLAGS)
FUZZ_NAMES   := $(patsubst fuzz/%.c,%,$(wildcard fuzz/*_fuzz.c))
FUZZ_TARGETS := $(addprefix build/fuzz/,$(FUZZ_NAMES))

define fuzz_rule
build/fuzz/$(1): fuzz/$(1).c fuzz/fuzz_lua.h $(wildcard modules/$(2)/*.c) $(wildcard modules/$(2)/*.h) $(wildcard include/*.h)
	@mkdir -p build/fuzz
	$(FUZZ_CC) $(FUZZ_CFLAGS) $$(CFLAGS_$(2)) -Imodules/$(2) -o $$@ $$< $(wildcard modules/$(2)/*.c) $$(LIBS_$(2)) -llua$(LUA_VERSION) -lm
endef
$(foreach t,$(FUZZ_NAMES),$(eval $(call fuzz_rule,$(t),$(firstword $(subst _, ,$(t))))))

.PHONY: fuzz-build fuzz fuzz-quick
fuzz-build: $(FUZZ_TARGETS)

# Each target's time is split between the Prosody versions (PROSODY=13 for one).
fuzz: deps fuzz-build
	@PROSODY_VERSIONS="$(PROSODY_VERSIONS)" scripts/run-fuzz.sh $(FUZZ_SECONDS) $(FUZZ_NAMES)

fuzz-quick: fuzz-build
	@PROSODY_VERSIONS="$(PROSODY_VERSIONS)" scripts/run-fuzz.sh $(FUZZ_QUICK_SECONDS) $(FUZZ_NAMES)
