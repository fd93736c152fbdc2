# soak/soak.mk — the long reliability run (include it from the top-level
# Makefile with `-include soak/soak.mk`). See docs/reliability.md.
#
#   make soak                  SOAK_SECONDS (default 120) of live mixed load,
#                              then the LeakSanitizer workload (SOAK_LSAN_ROUNDS)
#   make soak SOAK_SECONDS=14400   a release soak of four hours
#
# make test runs the bounded version: spec/reliability_soak_spec.lua
# (BRISK_SOAK_SECONDS, default 60) in both spec passes, with the
# LeakSanitizer workload in the ASan pass.

SOAK_SECONDS      ?= 120
SOAK_LSAN_ROUNDS  ?= 20000

.PHONY: soak
soak: deps all
	@SOAK_SECONDS=$(SOAK_SECONDS) SOAK_LSAN_ROUNDS=$(SOAK_LSAN_ROUNDS) scripts/soak.sh
