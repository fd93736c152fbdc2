#!/usr/bin/env bash
# Static analysis of every C file of every shared object with clang's
# analyzer (clang --analyze), using the build's own flags. Any report fails:
# the tree is kept at zero, so a new report is a new finding, never noise.
# Prints "analyze: N files, N reports" and appends "analyze <clean files>
# <files with reports>" to $BRISK_RESULTS when set.
set -uo pipefail
cd "$(dirname "$0")/.."
lua_cflags=$(pkg-config --cflags lua5.4 2>/dev/null || echo -I/usr/include/lua5.4)
files=0; bad=0
for f in modules/*/*.c; do
    m=$(basename "$(dirname "$f")")
    files=$((files + 1))
    out=$(clang --analyze -Xanalyzer -analyzer-output=text -std=c11 -D_POSIX_C_SOURCE=200809L \
        -Iinclude -I"modules/$m" $lua_cflags -o /dev/null "$f" 2>&1)
    if [ -n "$out" ]; then
        bad=$((bad + 1))
        echo "$out"
    fi
done
echo "analyze: $files files, $bad with reports"
[ -n "${BRISK_RESULTS:-}" ] && echo "analyze $((files - bad)) $bad" >>"$BRISK_RESULTS"
[ "$bad" -eq 0 ]
