#!/usr/bin/env bash
# scripts/soak.sh — the long reliability run (make soak).
#
#   SOAK_SECONDS=120 scripts/soak.sh        # default 120 s; hours for a release
#
# 1. spec/reliability_soak_spec.lua for SOAK_SECONDS against build/: a live
#    Prosody with every Brisk module under mixed load (messages, presence
#    churn, roster changes, reconnects); fails on any lost stanza, unanswered
#    iq, logged error, or RSS growth after warm-up beyond SOAK_RSS_KB
#    (default 8192 kB); SOAK_USERS clients (default 8).
# 2. spec/helpers/lsan_workload.lua under LeakSanitizer against build/asan/ (built
#    here if missing or stale): the same workload in miniature straight on
#    the C modules, SOAK_LSAN_ROUNDS rounds (default 20000).
# Figures go to stdout and to build/soak-report.txt.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${SOAK_SECONDS:-120}
rounds=${SOAK_LSAN_ROUNDS:-20000}
report=build/soak-report.txt
mkdir -p build
echo "# soak $(date -u +%Y-%m-%dT%H:%M:%SZ), ${seconds} s" >>"$report"

status=0
BRISK_SOAK_SECONDS=$seconds BRISK_SOAK_RSS_KB=${SOAK_RSS_KB:-8192} BRISK_SOAK_REPORT="$report" \
    BRISK_SOAK_USERS=${SOAK_USERS:-8} \
    SPECS=spec/reliability_soak_spec.lua scripts/run-specs.sh build || status=1

make --no-print-directory BUILD=build/asan OPT="-O1 -g -fno-omit-frame-pointer" \
    SAN="-fsanitize=address,undefined -fno-sanitize-recover=undefined" all
eval "$(make -s env BUILD=build/asan)"
# util.encodings stays mapped at exit (see spec/reliability_soak_spec.lua).
preload="$(gcc -print-file-name=libasan.so):$(gcc -print-file-name=libubsan.so):$BRISK_PROSODY_LIB/util/encodings.so"
start=$(date +%s)
if out=$(LD_PRELOAD="$preload" ASAN_OPTIONS=detect_leaks=1:halt_on_error=1 \
        UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 lua5.4 spec/helpers/lsan_workload.lua "$rounds" 2>&1) \
        && ! grep -q Sanitizer <<<"$out"; then
    result="no leaks"
else
    result="FAILED"
    status=1
fi
echo "$out" | sed 's/^/lsan: /' | tee -a "$report"
echo "lsan: ${rounds} rounds in $(( $(date +%s) - start )) s: ${result}" | tee -a "$report"
exit $status
