#!/usr/bin/env bash
# make check: the fast feedback loop. Every spec that needs no live server
# (unit and differential specs: no Prosody process, no make run, no
# luarocks), against the plain build and the Prosody that PROSODY names
# (default 0.12), with the differential specs' random rounds cut to
# BRISK_FUZZ_ITER (default 300; make test runs the full count). A spec needs
# a server when it starts one through spec/helpers/prosody.lua (start,
# attach) or runs make run or luarocks; everything else is in.
set -uo pipefail
cd "$(dirname "$0")/.."
specs=$(grep -L -E '\.start *[{(]|\.attach *\(|run_make_run|luarocks_make' spec/*_spec.lua | tr '\n' ' ')
BRISK_FUZZ_ITER=${BRISK_FUZZ_ITER:-300} SPECS="$specs" exec scripts/run-specs.sh "${1:-build}"
