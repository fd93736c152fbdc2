#!/usr/bin/env bash
# Runs Prosody's own specs (spec/upstream/) against stock and against Brisk
# built in the folder given as $1 (build/ or build/asan/), for the Prosody that
# PROSODY names; see scripts/upstream-specs.lua.
set -uo pipefail
cd "$(dirname "$0")/.."
build=${1:-build}
eval "$(make -s env BUILD="$build")"
export BRISK_ROOT=$(pwd)
if [ "${BRISK_ASAN:-}" = 1 ]; then
    export BRISK_ASAN_PRELOAD="$(gcc -print-file-name=libasan.so):$(gcc -print-file-name=libubsan.so)"
    export ASAN_OPTIONS="detect_leaks=0:abort_on_error=1:halt_on_error=1:strict_string_checks=1:detect_stack_use_after_return=0"
    export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"
    export BRISK_UPSTREAM_LABEL="upstream-asan-$BRISK_PROSODY"
fi
exec lua5.4 scripts/upstream-specs.lua
