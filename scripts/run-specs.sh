#!/usr/bin/env bash
# Runs every busted spec under Lua 5.4 against the shared objects in the build
# folder given as $1 (build/ or build/asan/) and the Prosody that PROSODY
# names (0.12, the default, or 13: its libraries in process, its servers for
# the live specs), then prints one closing line "N passed, N failed" and
# exits non-zero on any failure or error.
#
# With BRISK_ASAN=1 the sanitizer runtime is preloaded into lua5.4 and every
# prosody process the specs start, since the interpreters themselves are not
# built with ASan.
set -uo pipefail
cd "$(dirname "$0")/.."
build=${1:-build}
eval "$(make -s env BUILD="$build")"
version=$BRISK_PROSODY

preload=
if [ "${BRISK_ASAN:-}" = 1 ]; then
    # Only lua5.4 and the Prosody processes get the runtime: see spec/helpers/init.lua.
    preload="$(gcc -print-file-name=libasan.so):$(gcc -print-file-name=libubsan.so)"
    export BRISK_ASAN_PRELOAD="$preload"
    # Leak checking is off here: lua5.4 and prosody exit without freeing their
    # states; leaks in Brisk's own C code are checked by the fuzz and soak runs.
    export ASAN_OPTIONS="detect_leaks=0:abort_on_error=1:halt_on_error=1:strict_string_checks=1:detect_stack_use_after_return=0"
    export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"
    label="asan-$version"
else
    label="plain-$version"
fi

# SPECS="spec/foo_*_spec.lua" runs a subset.
specs=$(ls ${SPECS:-spec/*_spec.lua} 2>/dev/null)
if [ -z "$specs" ]; then
    echo "no specs found" >&2
    exit 1
fi

out=$(mktemp)
trap 'rm -f "$out"' EXIT
# busted prints "N successes / N failures / N errors / N pending : T seconds".
LD_PRELOAD="$preload" lua5.4 /usr/bin/busted --lpath="./?.lua" --helper=spec/helpers/init.lua \
    -o utfTerminal $specs 2>&1 | tee "$out"
status=${PIPESTATUS[0]}

summary=$(grep -aE '^[0-9]+ successe?s? / [0-9]+ failures? / [0-9]+ errors? / [0-9]+ pending' "$out" | tail -n 1)
pass=$(echo "$summary" | sed -E 's#^([0-9]+) success.*#\1#')
fail=$(echo "$summary" | sed -E 's#.* / ([0-9]+) failures? / ([0-9]+) errors?.*#\1 \2#' | awk '{print $1 + $2}')
pending=$(echo "$summary" | sed -E 's#.* / ([0-9]+) pending.*#\1#')
if [ -z "$summary" ]; then
    echo "specs-$label: busted printed no summary (crashed?)" >&2
    echo "specs-$label: 0 passed, 1 failed"
    [ -n "${BRISK_RESULTS:-}" ] && echo "specs-$label 0 1" >>"$BRISK_RESULTS"
    exit 1
fi
echo
echo "specs-${label}: ${pass} passed, ${fail} failed, ${pending} skipped"
[ -n "${BRISK_RESULTS:-}" ] && echo "specs-$label $pass $fail" >>"$BRISK_RESULTS"
if [ "$status" -ne 0 ] || [ "$fail" -ne 0 ]; then
    exit 1
fi
