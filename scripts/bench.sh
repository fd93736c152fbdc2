#!/bin/sh
# Brisk's benchmark harness (make bench / make bench-quick).
#
# Runs every per-area micro benchmark bench/<area>.lua (each measures stock
# Prosody and Brisk in the same run and prints a Markdown section), then the
# end-to-end load test bench/e2e.lua, and writes
#   bench/results/<YYYY-MM-DD>.md   machine description, summary table, sections
#   bench/results/<YYYY-MM-DD>.png  chart of the Brisk/stock ratios (gnuplot)
# and copies both to bench/results/latest.md and latest.png.  A quick run
# writes <date>-quick.md/png instead and updates latest.* only when the
# current latest is itself a quick run, so a quick look never hides the
# last full report that the README links.
#
# The Prosody measured is the one `make env` names (PROSODY=0.12, the
# default, or PROSODY=13): with 13 every file name gets "-prosody13" before
# its extension (latest-prosody13.md, ...), so both versions' reports live
# side by side.
#
#   scripts/bench.sh [--quick] [--no-e2e]
#
# Areas whose file does not exist are simply not run; an area that fails or
# runs past its time limit is reported as such and the run goes on.
set -u

QUICK=
E2E=1
for a in "$@"; do
    case "$a" in
        --quick) QUICK=--quick ;;
        --no-e2e) E2E= ;;
        *) echo "usage: scripts/bench.sh [--quick] [--no-e2e]" >&2; exit 2 ;;
    esac
done

cd "$(dirname "$0")/.." || exit 1
ROOT=$(pwd)
eval "$(make -s env)"
export LUA_PATH LUA_CPATH
SUFFIX=
[ "$BRISK_PROSODY" = 13 ] && SUFFIX=-prosody13

# Time limits per area: the quick run must stay under 3 minutes in all, the
# full run under 20.
# The end-to-end driver gets a budget a little under its limit and leaves
# out rounds (second rounds first) that would not fit, rather than be killed.
if [ -n "$QUICK" ]; then AREA_LIMIT=35; E2E_LIMIT=140; E2E_BUDGET=125; else AREA_LIMIT=180; E2E_LIMIT=900; E2E_BUDGET=840; fi

DATE=$(date -u +%Y-%m-%d)
NAME=$DATE
[ -n "$QUICK" ] && NAME=$DATE-quick
NAME=$NAME$SUFFIX
LATEST=latest$SUFFIX
OUT=bench/results
mkdir -p "$OUT" build/bench
WORK=$(mktemp -d /tmp/brisk-benchrun-XXXXXX)
trap 'rm -rf "$WORK"' EXIT INT TERM
TSV="$WORK/rows.tsv"
: > "$TSV"
: > "$WORK/sections.md"
: > "$WORK/status.md"

# ---- the machine ----------------------------------------------------------
pkgver() { dpkg-query -W -f='${Version}' "$1" 2>/dev/null || echo "?"; }
CPU=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n 1)
MEM=$(awk '/^MemTotal/ { printf "%.1f GiB", $2 / 1048576 }' /proc/meminfo)
COMMIT=$(git rev-parse --short HEAD 2>/dev/null || echo "uncommitted")
DIRTY=$(git status --porcelain 2>/dev/null | head -n 1)
[ -n "$DIRTY" ] && COMMIT="$COMMIT (with uncommitted changes)"
LOAD0=$(cut -d' ' -f1-3 /proc/loadavg)
START=$(date +%s)

# ---- micro benchmarks -----------------------------------------------------
for f in bench/*.lua; do
    [ -e "$f" ] || continue
    area=$(basename "$f" .lua)
    case "$area" in e2e*) continue ;; esac    # the harness's own driver files
    echo "bench: $area" >&2
    t0=$(date +%s)
    BENCH_TSV="$TSV" timeout -k 5 "$AREA_LIMIT" lua5.4 "$f" $QUICK > "$WORK/$area.md" 2> "$WORK/$area.err"
    rc=$?
    t1=$(date +%s)
    if [ $rc -eq 0 ]; then
        cat "$WORK/$area.md" >> "$WORK/sections.md"
        printf '\n' >> "$WORK/sections.md"
        echo "| $area | ok | $((t1 - t0)) s |" >> "$WORK/status.md"
    else
        [ $rc -eq 124 ] && why="timed out after ${AREA_LIMIT} s" || why="failed (exit $rc)"
        echo "bench: $area $why" >&2
        tail -n 5 "$WORK/$area.err" >&2
        echo "| $area | $why | $((t1 - t0)) s |" >> "$WORK/status.md"
        {
            echo "### $area: $why"
            echo
            echo '```'
            tail -n 15 "$WORK/$area.err"
            echo '```'
            echo
        } >> "$WORK/sections.md"
    fi
done

# ---- end to end -------------------------------------------------------------
if [ -n "$E2E" ] && [ -f bench/e2e.lua ]; then
    echo "bench: e2e" >&2
    make -s bench-loadgen >&2   # the load generator and the servers' probe

    t0=$(date +%s)
    BENCH_E2E_BUDGET=$E2E_BUDGET BENCH_E2E_PIDS="$WORK/e2e.pids" BENCH_TSV="$TSV" timeout -k 10 "$E2E_LIMIT" lua5.4 bench/e2e.lua $QUICK \
        > "$WORK/e2e.md" 2> "$WORK/e2e.err"
    rc=$?
    # Had the driver been killed, its server would still run: stop it (only
    # a process of ours that is still Prosody) and remove its directory.
    if [ -f "$WORK/e2e.pids" ]; then
        while read -r pid dir; do
            if [ -d "/proc/$pid" ] && tr '\0' ' ' < "/proc/$pid/cmdline" 2>/dev/null | grep -q "prosody --config $dir/"; then
                echo "bench: stopping leftover server $pid" >&2
                kill -TERM "$pid" 2>/dev/null; sleep 2; kill -KILL "$pid" 2>/dev/null
            fi
            case "$dir" in /tmp/brisk-bench-*) rm -rf "$dir" ;; esac
        done < "$WORK/e2e.pids"
    fi
    t1=$(date +%s)
    if [ $rc -eq 0 ]; then
        cat "$WORK/e2e.md" >> "$WORK/sections.md"
        echo "| e2e | ok | $((t1 - t0)) s |" >> "$WORK/status.md"
    else
        [ $rc -eq 124 ] && why="timed out after ${E2E_LIMIT} s" || why="failed (exit $rc)"
        tail -n 10 "$WORK/e2e.err" >&2
        echo "| e2e | $why | $((t1 - t0)) s |" >> "$WORK/status.md"
        { echo "### e2e: $why"; echo; echo '```'; tail -n 20 "$WORK/e2e.err"; echo '```'; echo; } >> "$WORK/sections.md"
    fi
fi

END=$(date +%s)
LOAD1=$(cut -d' ' -f1-3 /proc/loadavg)

# ---- chart ------------------------------------------------------------------
# Rows whose numbers are not both positive cannot make a ratio; they stay in
# the sections but not in the chart or the summary.
awk -F'\t' 'NF >= 5 && $3 + 0 > 0 && $4 + 0 > 0 {
        printf "%s: %s\t%.6g\t%s\t%s\t%s\t%s\n", $1, $2, $4 / $3, $1, $3, $4, $5 }' "$TSV" > "$WORK/ratios.tsv"
NROWS=$(wc -l < "$WORK/ratios.tsv")
# Chart labels carry the unit, since one figure often comes in two units.
awk -F'\t' '{ printf "%s (%s)\t%s\n", $1, $6, $2 }' "$WORK/ratios.tsv" > "$WORK/chart.dat"
# The axis covers every ratio, in powers of two, at least 1/4 .. 16.
XR=$(awk -F'\t' 'BEGIN { lo = 0.25; hi = 16 }
        { while ($2 < lo * 1.05) lo /= 2; while ($2 > hi / 1.05) hi *= 2 }
        END { printf "xmin=%g; xmax=%g", lo, hi }' "$WORK/chart.dat")
MODE=full
[ -n "$QUICK" ] && MODE=quick
CHART_OK=
if [ "$NROWS" -gt 0 ]; then
    if gnuplot -e "datafile='$WORK/chart.dat'; outfile='$OUT/$NAME.png'; nrows=$NROWS; $XR; charttitle='Brisk vs stock Prosody $BRISK_PROSODY, $DATE ($MODE run)'" bench/chart.gp; then
        CHART_OK=1
    else
        echo "bench: gnuplot failed; no chart" >&2
    fi
fi

# ---- report -----------------------------------------------------------------
{
    echo "# Brisk benchmarks, $DATE ($MODE run, Prosody $BRISK_PROSODY)"
    echo
    echo "Every figure compares stock Prosody with Brisk measured in the same run on the same machine."
    echo "How to reproduce and what each number means: [docs/benchmarks.md](../../docs/benchmarks.md)."
    echo
    echo "| Machine | |"
    echo "|---|---|"
    echo "| CPU | ${CPU:-?} |"
    echo "| Cores | $(nproc) |"
    echo "| Memory | $MEM |"
    echo "| Kernel | $(uname -sr) |"
    echo "| OS | $(. /etc/os-release 2>/dev/null && echo "$PRETTY_NAME") |"
    if [ "$BRISK_PROSODY" = 13 ]; then
        echo "| Prosody | $(cat build/prosody-13/version 2>/dev/null || echo "?") (bookworm-backports, unpacked into build/prosody-13) |"
    else
        echo "| Prosody | $(pkgver prosody) |"
    fi
    echo "| Lua | $(pkgver lua5.4) |"
    echo "| libexpat | $(pkgver libexpat1) |"
    echo "| SQLite | $(pkgver libsqlite3-0) |"
    echo "| libsodium | $(pkgver libsodium23) |"
    echo "| Compiler | $(${CC:-cc} --version 2>/dev/null | head -n 1) |"
    echo "| Brisk | $COMMIT |"
    echo "| Load average | $LOAD0 at start, $LOAD1 at end (a busy machine makes throughput noisy; CPU per stanza is less affected) |"
    echo "| Run time | $((END - START)) s |"
    echo
    if [ "$NROWS" -gt 0 ]; then
        echo "## Summary"
        echo
        [ -n "$CHART_OK" ] && { echo "![Brisk / stock ratios]($NAME.png)"; echo; }
        echo "| Area | Figure | Stock | Brisk | Brisk / stock | Unit |"
        echo "|---|---|---:|---:|---:|---|"
        awk -F'\t' '{ printf "| %s | %s | %s | %s | %.2f× | %s |\n", $3, substr($1, length($3) + 3), $4, $5, $2, $6 }' "$WORK/ratios.tsv"
        echo
        echo "Every figure in this table is higher-is-better; the ratio above 1 means Brisk is better."
        echo
    fi
    echo "| Benchmark | Status | Time |"
    echo "|---|---|---|"
    cat "$WORK/status.md"
    echo
    echo "## Details"
    echo
    cat "$WORK/sections.md"
} > "$OUT/$NAME.md"

if [ -z "$QUICK" ] || [ ! -f "$OUT/$LATEST.md" ] || head -n 1 "$OUT/$LATEST.md" | grep -q "(quick run"; then
    cp "$OUT/$NAME.md" "$OUT/$LATEST.md"
    # latest.md links the dated chart; latest.png is the same picture for the README.
    if [ -n "$CHART_OK" ]; then cp "$OUT/$NAME.png" "$OUT/$LATEST.png"; else rm -f "$OUT/$LATEST.png"; fi
    echo "bench: $LATEST.md is now this run" >&2
fi
echo "bench: wrote $OUT/$NAME.md${CHART_OK:+ and $OUT/$NAME.png} in $((END - START)) s" >&2
