#!/usr/bin/env bash
# Before/after of the in-process `load` rows (allocate+deallocate pairs, durability none,
# 8 shards; issue 11's allocation hot path): two freqalloc binaries in alternating order
# (A B A' then A' B A, ...), where A' is A again: the calibrator, whose spread against A is the
# noise floor of the run. Every run gets a fresh store. Prints, per client count and binary,
# the best and median ops/s and the median CPU per operation (user+sys of the whole process, in
# ns; on a machine shared with other work it moves much less than ops/s does).
#
#   benches/load_ab.sh OLD_FREQALLOC_BINARY [NEW_FREQALLOC_BINARY]
#
# NEW defaults to this tree's release build. Environment: LOAD_AB_ROUNDS [4],
# LOAD_AB_SECONDS [3], LOAD_AB_CLIENTS ["1 4 12"]. Needs /usr/bin/time, awk.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
old_bin=${1:?usage: benches/load_ab.sh OLD_FREQALLOC_BINARY [NEW_FREQALLOC_BINARY]}
new_bin=${2:-}
rounds=${LOAD_AB_ROUNDS:-4}
secs=${LOAD_AB_SECONDS:-3}
clients=${LOAD_AB_CLIENTS:-1 4 12}
if [ -z "$new_bin" ]; then
    (cd "$root" && cargo build --release --quiet --bin freqalloc)
    new_bin="$root/target/release/freqalloc"
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# run LABEL BINARY: one `load` per client count on a fresh store; appends "label C ops/s ns/op".
run() {
    local label=$1 bin=$2 store="$tmp/store-$1"
    rm -rf "$store"
    "$bin" --data "$store" init --pool 0-99999 --shards 8 --durability none >/dev/null
    for c in $clients; do
        /usr/bin/time -f "%U %S" -o "$tmp/time" \
            "$bin" --data "$store" load --clients "$c" --seconds "$secs" --json 2>/dev/null |
            tail -1 >"$tmp/json"
        awk -v l="$label" -v c="$c" -v t="$(cat "$tmp/time")" '{
            match($0, /"ops_per_sec":[0-9.]+/); ops = substr($0, RSTART + 14, RLENGTH - 14)
            match($0, /"operations":[0-9]+/); n = substr($0, RSTART + 13, RLENGTH - 13)
            split(t, cpu, " ")
            printf "%s %s %d %.0f\n", l, c, ops, (cpu[1] + cpu[2]) * 1e9 / n
        }' "$tmp/json" >>"$tmp/rows"
    done
}

for i in $(seq 1 "$rounds"); do
    if [ $((i % 2)) = 1 ]; then
        run old "$old_bin"; run new "$new_bin"; run old-again "$old_bin"
    else
        run old-again "$old_bin"; run new "$new_bin"; run old "$old_bin"
    fi
done

echo "load, durability none, 8 shards, ${secs}s rows, $rounds rounds; load average $(cut -d' ' -f1-3 /proc/loadavg)"
# stats LABEL C COLUMN: "best median" of that column (ops/s: 3, ns/op: 4) over the rounds.
stats() {
    awk -v l="$1" -v c="$2" -v k="$3" '$1 == l && $2 == c { print $k }' "$tmp/rows" | sort -n |
        awk '{ v[NR] = $1 } END { m = NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2
                                  print v[NR], m }'
}
for c in $clients; do
    read -r ob om <<<"$(stats old "$c" 3)"
    read -r _ oc <<<"$(stats old "$c" 4)"
    for l in old old-again new; do
        read -r b m <<<"$(stats "$l" "$c" 3)"
        read -r _ cpu <<<"$(stats "$l" "$c" 4)"
        awk -v c="$c" -v l="$l" -v b="$b" -v m="$m" -v cpu="$cpu" -v ob="$ob" -v om="$om" -v oc="$oc" \
            'BEGIN { printf "clients %-3s %-9s best %6.3fM (%.2fx)  median %6.3fM (%.2fx)  cpu/op %5.0f ns (%.2fx)\n",
                     c, l, b / 1e6, b / ob, m / 1e6, m / om, cpu, cpu / oc }'
    done
done
