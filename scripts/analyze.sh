#!/usr/bin/env bash
# Static analysis with clang's analyzer (clang --analyze) of every C file of
# the modules named as arguments (default: every folder under modules/),
# with the build's flags (ANALYZE_CFLAGS, which `make analyze` passes). Any
# report fails: the tree is kept at zero, so a new report is a new finding,
# never noise. Prints "analyze: N files, N with reports" and appends
# "analyze <clean files> <files with reports>" to $BRISK_RESULTS when set.
set -uo pipefail
cd "$(dirname "$0")/.."
cflags=${ANALYZE_CFLAGS:-"-std=c11 -D_POSIX_C_SOURCE=200809L -Iinclude $(pkg-config --cflags lua5.4 2>/dev/null || echo -I/usr/include/lua5.4)"}
modules=("$@")
[ ${#modules[@]} -eq 0 ] && modules=($(ls modules))
files=0; bad=0
for m in "${modules[@]}"; do
    for f in modules/"$m"/*.c; do
        files=$((files + 1))
        # shellcheck disable=SC2086
        out=$(clang --analyze -Xanalyzer -analyzer-output=text $cflags -I"modules/$m" -o /dev/null "$f" 2>&1)
        if [ -n "$out" ]; then
            bad=$((bad + 1))
            echo "$out"
        fi
    done
done
echo "analyze: $files files, $bad with reports"
[ -n "${BRISK_RESULTS:-}" ] && echo "analyze $((files - bad)) $bad" >>"$BRISK_RESULTS"
[ "$bad" -eq 0 ]
