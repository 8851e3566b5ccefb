#!/usr/bin/env bash
# freqalloc and BEAM, side by side: runs the same workloads on both in one go and prints
# workload, BEAM figure, Rust figure, Rust/BEAM and the targets of issue 7.
#
#   benches/beam/compare.sh [--markdown FILE] [--svg-dir DIR] [--json FILE]
#
#   --markdown FILE  also write the table as markdown (for benches/RESULTS.md)
#   --svg-dir DIR    also write beam-clients.svg and beam-shards.svg there
#   --json FILE      keep every raw result (one JSON object a line)
#
# Environment (defaults in brackets): BEAM_COMPARE_SECONDS [3] per allocator run,
# BEAM_COMPARE_KEYS [1000000] per ETS run, BEAM_COMPARE_DETS_KEYS [100000] per DETS run,
# BEAM_COMPARE_SYNC_WRITES [2000] durable single writes, BEAM_COMPARE_POOL [100000]
# frequencies, BEAM_COMPARE_CLIENTS ["1 4 12 64"], BEAM_COMPARE_SHARDS ["1 2 4 8"] (the
# largest is the layout of the clients sweep), BEAM_COMPARE_SHARD_CLIENTS [12] clients of
# the shards sweep. About three minutes with the defaults on 2 cores.
#
# Needs Erlang/OTP (erl, erlc); without it, says how to install it and exits 0. CI does not run it.
set -euo pipefail

root=$(cd "$(dirname "$0")/../.." && pwd)
markdown="" svg_dir="" json_out=""
while [ $# -gt 0 ]; do
    case "$1" in
        --markdown) markdown=$2; shift 2 ;;
        --svg-dir) svg_dir=$2; shift 2 ;;
        --json) json_out=$2; shift 2 ;;
        -h|--help) sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "compare.sh: unknown argument $1 (try --help)" >&2; exit 2 ;;
    esac
done

if ! command -v erl >/dev/null 2>&1 || ! command -v erlc >/dev/null 2>&1; then
    echo "compare.sh needs Erlang/OTP (erl and erlc) for the BEAM side."
    echo "Install it, e.g. on Debian or Ubuntu: sudo apt-get install erlang-nox"
    echo "(CI does not need it; the Rust side alone: freqalloc bench tables, freqalloc load --json)"
    exit 0
fi

seconds=${BEAM_COMPARE_SECONDS:-3}
keys=${BEAM_COMPARE_KEYS:-1000000}
dets_keys=${BEAM_COMPARE_DETS_KEYS:-100000}
sync_writes=${BEAM_COMPARE_SYNC_WRITES:-2000}
pool=${BEAM_COMPARE_POOL:-100000}
clients=${BEAM_COMPARE_CLIENTS:-"1 4 12 64"}
shards=${BEAM_COMPARE_SHARDS:-"1 2 4 8"}
shard_clients=${BEAM_COMPARE_SHARD_CLIENTS:-12}
big=$(printf '%s\n' $shards | sort -n | tail -1)

cd "$root"
echo "== building the Rust side (cargo build --release)" >&2
cargo build --release --quiet --bin freqalloc --example beam_report
bin="$root/target/release/freqalloc"
report="$root/target/release/examples/beam_report"

tmp=$(mktemp -d "${TMPDIR:-/tmp}/freqalloc-beam.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
mkdir "$tmp/ebin"
erlc -o "$tmp/ebin" benches/beam/freqbench.erl
out="$tmp/results.jsonl"
: >"$out"

beam() { erl -noshell -pa "$tmp/ebin" -run freqbench main "$@"; }
loadavg() { cut -d' ' -f1-3 /proc/loadavg 2>/dev/null || echo unknown; }
# Labels freqalloc load's JSON summary (its last line) as a Rust allocator result.
label() { tail -n 1 | sed "s|^{|{\"side\":\"rust\",\"workload\":\"alloc/$1\",|"; }
json_list() { printf '%s\n' $1 | paste -sd, -; }

load_start=$(loadavg)
echo "== load average at start: $load_start" >&2

echo "== tables on BEAM (ETS $keys keys, DETS $dets_keys keys, $sync_writes synced writes)" >&2
beam ets "$keys" | tee -a "$out" >&2
beam dets "$dets_keys" "$sync_writes" "$tmp" | tee -a "$out" >&2
echo "== tables in Rust" >&2
"$bin" bench tables --json --keys "$keys" --dets-keys "$dets_keys" \
    --sync-writes "$sync_writes" | tee -a "$out" >&2

echo "== allocator on BEAM ($seconds s a run)" >&2
for c in $clients; do
    beam alloc router "$big" "$c" "$seconds" "$pool" | tee -a "$out" >&2
    beam alloc single 1 "$c" "$seconds" "$pool" | tee -a "$out" >&2
done
for s in $shards; do
    [ "$s" = "$big" ] && [[ " $clients " == *" $shard_clients "* ]] && continue
    beam alloc router "$s" "$shard_clients" "$seconds" "$pool" | tee -a "$out" >&2
done

echo "== allocator in Rust ($seconds s a run)" >&2
init() { "$bin" --data "$1" init --pool "0-$((pool - 1))" --shards "$2" --durability "$3" >/dev/null; }
for durability in none sync; do
    store="$tmp/store-$durability-$big"
    init "$store" "$big" "$durability"
    for c in $clients; do
        "$bin" --data "$store" load --clients "$c" --seconds "$seconds" --json \
            | label "$durability" | tee -a "$out" >&2
    done
done
for s in $shards; do
    [ "$s" = "$big" ] && [[ " $clients " == *" $shard_clients "* ]] && continue
    store="$tmp/store-none-$s"
    init "$store" "$s" none
    "$bin" --data "$store" load --clients "$shard_clients" --seconds "$seconds" --json \
        | label none | tee -a "$out" >&2
done

load_end=$(loadavg)
cpu=$(grep -m1 'model name' /proc/cpuinfo 2>/dev/null | sed 's/.*: //' || true)
otp=$(erl -noshell -eval 'io:format("~s", [erlang:system_info(otp_release)]), halt().')
erts=$(erl -noshell -eval 'io:format("~s", [erlang:system_info(version)]), halt().')
rustc_version=$(rustc --version 2>/dev/null || echo rustc)
printf '{"side":"meta","date":"%s","cpu":"%s","cores":%s,"otp":"%s","erts":"%s","rustc":"%s","load_start":"%s","load_end":"%s","seconds":%s,"pool":%s,"clients":[%s],"shards":[%s],"shard_clients":%s}\n' \
    "$(date -u '+%Y-%m-%d %H:%M UTC')" "${cpu:-unknown}" "$(nproc)" "$otp" "$erts" \
    "$rustc_version" "$load_start" "$load_end" "$seconds" "$pool" \
    "$(json_list "$clients")" "$(json_list "$shards")" "$shard_clients" >>"$out"
echo "== load average at end: $load_end" >&2

report_args=("$out")
[ -n "$markdown" ] && report_args+=(--markdown "$markdown")
[ -n "$svg_dir" ] && report_args+=(--svg-dir "$svg_dir")
"$report" "${report_args[@]}"
if [ -n "$json_out" ]; then cp "$out" "$json_out"; fi
