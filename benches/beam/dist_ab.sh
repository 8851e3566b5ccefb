#!/usr/bin/env bash
# The distribution rows of issue 13, back to back and with the server's CPU per call: the
# course's server on a BEAM node (tests/erl/frequency_beam.erl), a freqalloc node, and
# optionally a second freqalloc binary (an older build, for before/after), all up at once on a
# private epmd; every row runs on each server in turn with the same client, so they share the
# machine's load. Prints one line a row: pairs/s, the server's task-clock µs and context
# switches per call (perf stat -p), the load average.
#
#   benches/beam/dist_ab.sh [OLD_FREQALLOC_BINARY]
#
# Environment: DIST_AB_SECONDS [3] per row, DIST_AB_ROUNDS [1], DIST_AB_POOL [100000].
# Needs erl, erlc, epmd, perf, bc. Durability none, 8 shards (as compare.sh's rows).
set -euo pipefail

root=$(cd "$(dirname "$0")/../.." && pwd)
old_bin=${1:-}
secs=${DIST_AB_SECONDS:-3}
rounds=${DIST_AB_ROUNDS:-1}
pool=${DIST_AB_POOL:-100000}
for tool in erl erlc epmd perf bc; do
    command -v "$tool" >/dev/null || { echo "dist_ab.sh needs $tool" >&2; exit 1; }
done
cd "$root"
cargo build --release --quiet --bin freqalloc
new_bin="$root/target/release/freqalloc"

. benches/beam/lib.sh
bench_setup freqalloc-ab
cookie="ab$(od -An -N8 -tx8 /dev/urandom | tr -d ' ')"

start_private_epmd dist_ab.sh

declare -A pid node bin
start_freqalloc() { # side binary name
    "$2" --data "$tmp/store-$1" init --pool "0-$((pool - 1))" --shards 8 --durability none >/dev/null
    "$2" --data "$tmp/store-$1" node --name "$3@localhost" --cookie "$cookie" \
        >"$tmp/$1.out" 2>"$tmp/$1.out.err" &
    pid[$1]=$!; children+=("$!"); node[$1]="$3@localhost"; bin[$1]=$2
    wait_ready "$tmp/$1.out" "freqalloc node $3@localhost serving" 60
}
erl -sname abbeam@localhost -setcookie "$cookie" -noshell -hidden -pa "$tmp/ebin" \
    -eval "frequency_beam:start_node(0, $((pool - 1)))" >"$tmp/beam.out" 2>"$tmp/beam.out.err" &
pid[beam]=$!; children+=("$!"); node[beam]=abbeam@localhost
wait_ready "$tmp/beam.out" "frequency_beam abbeam@localhost serving" 60
start_freqalloc new "$new_bin" abnew
sides="beam new"
if [ -n "$old_bin" ]; then start_freqalloc old "$old_bin" abold; sides="beam old new"; fi

row() { # side kind(beam|rust) clients
    local side=$1 kind=$2 c=$3 out calls pairs tc cs
    perf stat -x, -e task-clock,context-switches -p "${pid[$side]}" -o "$tmp/perf" \
        -- sleep "$(echo "$secs + 1.6" | bc)" &
    local pp=$!
    sleep 0.2
    if [ "$kind" = beam ]; then
        out=$(erl -sname "abc$RANDOM@localhost" -setcookie "$cookie" -noshell -pa "$tmp/ebin" \
            -run freqbench main dist_clients "${node[$side]}" "$c" "$secs" "$side")
        pairs=$(echo "$out" | sed 's/.*"pairs_per_sec":\([0-9.]*\).*/\1/')
        calls=$(echo "$out" | sed 's/.*"ops_per_sec":\([0-9.]*\).*/\1/')
        calls=$(echo "$calls * $secs" | bc)
    else
        out=$(FREQALLOC_COOKIE="$cookie" "${bin[$side]}" load --node "${node[$side]}" \
            --clients "$c" --seconds "$secs" --json --pipeline 16 2>/dev/null | tail -n 1)
        pairs=$(echo "$out" | sed 's/.*"pairs_per_sec":\([0-9.]*\).*/\1/')
        calls=$(echo "$out" | sed 's/.*"operations":\([0-9]*\).*/\1/')
    fi
    wait "$pp"
    tc=$(grep task-clock "$tmp/perf" | cut -d, -f1)
    cs=$(grep context-switches "$tmp/perf" | cut -d, -f1)
    awk -v s="$side" -v k="$kind" -v c="$c" -v p="$pairs" -v n="$calls" -v tc="$tc" -v cs="$cs" \
        -v la="$(cut -d' ' -f1 /proc/loadavg)" 'BEGIN {
        printf "%-5s %-12s clients=%-3s pairs/s=%8.0f  server_cpu_us/call=%6.1f  cs/call=%5.2f  load=%s\n",
            s, (k == "beam" ? "BEAM-clients" : "rust-client"), c, p, tc * 1000 / n, cs / n, la }'
}
echo "== start $(date -u '+%Y-%m-%d %H:%M:%S UTC'), load $(cut -d' ' -f1-3 /proc/loadavg)"
for ((r = 1; r <= rounds; r++)); do
    for c in 1 16 64; do for s in $sides; do row "$s" beam "$c"; done; done
    for c in 1 4; do for s in $sides; do [ "$s" = beam ] || row "$s" rust "$c"; done; done
done
echo "== end $(date -u '+%H:%M:%S'), load $(cut -d' ' -f1-3 /proc/loadavg)"
