#!/usr/bin/env bash
# Runs each named libFuzzer target in build/fuzz/ for $1 seconds over its
# checked-in corpus (fuzz/corpus/<name>/, read only) plus a scratch corpus in
# build/fuzz/corpus/<name>/, and fails if any target finds a crash, a leak or
# undefined behaviour. A crashing input is left as build/fuzz/<name>-crash-* :
# copy it into fuzz/corpus/<name>/ with the fix, so it stays a regression test.
#
# The targets that compare with stock Prosody's libraries (those that open
# them through fuzz_lua.h's fuzz_lua_open) run against every version in
# PROSODY_VERSIONS ("0.12 13" by default), the seconds split between them;
# the others do not depend on Prosody and run once, for all the seconds.
set -uo pipefail
cd "$(dirname "$0")/.."
seconds=$1; shift
versions=${PROSODY_VERSIONS:-0.12 13}
nversions=$(echo $versions | wc -w)
per=$(( seconds / nversions )); [ "$per" -lt 5 ] && per=5
export ASAN_OPTIONS="detect_leaks=1:abort_on_error=1"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"
failed=0; passed=0
for name in "$@"; do
    mkdir -p "build/fuzz/corpus/$name" "fuzz/corpus/$name"
    if grep -q "fuzz_lua_open" "fuzz/$name.c" 2>/dev/null; then
        these=$versions; secs=$per
    else
        these=${versions%% *}; secs=$seconds
    fi
    for v in $these; do
        lib=$(make -s env PROSODY="$v" | sed -n 's/.*BRISK_PROSODY_LIB="\([^"]*\)".*/\1/p')
        log="build/fuzz/$name-$v.log"
        if BRISK_PROSODY_LIB="$lib" build/fuzz/"$name" -max_total_time="$secs" -rss_limit_mb=2048 -timeout=10 \
            -artifact_prefix="build/fuzz/$name-" -print_final_stats=1 \
            "build/fuzz/corpus/$name" "fuzz/corpus/$name" >"$log" 2>&1; then
            runs=$(grep -a "stat::number_of_executed_units" "$log" | awk '{print $2}')
            echo "fuzz $name (Prosody $v): ok, ${runs:-?} inputs in ${secs}s"
            passed=$((passed + 1))
        else
            echo "fuzz $name (Prosody $v): FAILED, see $log"
            tail -n 40 "$log"
            failed=$((failed + 1))
        fi
    done
done
echo "fuzz: ${passed} passed, ${failed} failed"
[ -n "${BRISK_RESULTS:-}" ] && echo "fuzz $passed $failed" >>"$BRISK_RESULTS"
[ "$failed" -eq 0 ]
