#!/usr/bin/env bash
# Instructions per proxied request, counted by callgrind over bench/inproc.py: repeatable on a
# shared machine (unlike seconds). Two runs of different lengths cancel start-up and warm-up.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v valgrind >/dev/null || { echo "needs valgrind (apt-get install valgrind)" >&2; exit 1; }
# Usage: bench/instructions.sh [--floor]   (--floor: bench/peers/floor_proxy.py instead of lbd)
count() {
    local requests=$1
    shift
    valgrind --tool=callgrind --callgrind-out-file=/dev/null .venv/bin/python bench/inproc.py "$requests" "$@" 2>&1 \
        | awk '/Collected/ {gsub(",", "", $4); print $4}'
}
short=$(count 1000 "$@")
long=$(count 4000 "$@")
echo "instructions per request: $(( (long - short) / 3000 ))"
