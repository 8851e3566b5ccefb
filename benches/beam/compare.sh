#!/usr/bin/env bash
# freqalloc and BEAM, side by side: runs the same workloads on both in one go and prints
# workload, BEAM figure, Rust figure, Rust/BEAM and the targets of issue 7.
#
#   benches/beam/compare.sh [--markdown FILE] [--svg-dir DIR] [--json FILE] [--dist-only|--no-dist]
#                           [--cluster]
#
#   --markdown FILE  also write the table as markdown (for benches/RESULTS.md)
#   --svg-dir DIR    also write beam-clients.svg, beam-shards.svg and (with the distribution
#                    rows) beam-dist.svg there
#   --json FILE      keep every raw result (one JSON object a line)
#   --dist-only      only the distribution rows (issue 13); --no-dist: all but them
#   --cluster        also the cluster rows (issue 14: pairs/s against 1, 2, 3 nodes and 1, 2
#                    replicas, freqalloc vs the course's router on BEAM nodes;
#                    benches/beam/cluster.sh, whose CLUSTER_* variables pass through, e.g.
#                    CLUSTER_REPLICAS=1; about two and a half more minutes, four when freqalloc's
#                    init takes --nodes with --replicas 2; its chart beam-cluster.svg into --svg-dir)
#
# Environment (defaults in brackets): BEAM_COMPARE_SECONDS [3] per allocator run,
# BEAM_COMPARE_KEYS [1000000] per ETS run, BEAM_COMPARE_DETS_KEYS [100000] per DETS run,
# BEAM_COMPARE_SYNC_WRITES [2000] durable single writes, BEAM_COMPARE_POOL [100000]
# frequencies, BEAM_COMPARE_CLIENTS ["1 4 12 64"], BEAM_COMPARE_SHARDS ["1 2 4 8"] (the
# largest is the layout of the clients sweep), BEAM_COMPARE_SHARD_CLIENTS [12] clients of
# the shards sweep. Distribution rows (issue 13, over loopback with a private epmd):
# BEAM_COMPARE_DIST_CLIENTS ["1 16 64"] BEAM client processes calling the freqalloc node and
# the BEAM node (tests/erl/frequency_beam.erl) with gen_server allocate+deallocate pairs;
# BEAM_COMPARE_DIST_RUST_CLIENTS ["1 4"] `freqalloc load --node` clients, each with
# BEAM_COMPARE_DIST_PIPELINE [16] calls in flight. About three minutes with the defaults on
# 2 cores, plus about half a minute of distribution rows.
#
# Needs Erlang/OTP (erl, erlc); without it, says how to install it and exits 0. CI does not run it.
set -euo pipefail

root=$(cd "$(dirname "$0")/../.." && pwd)
markdown="" svg_dir="" json_out="" dist=1 local=1 cluster=0
while [ $# -gt 0 ]; do
    case "$1" in
        --markdown) markdown=$2; shift 2 ;;
        --svg-dir) svg_dir=$2; shift 2 ;;
        --json) json_out=$2; shift 2 ;;
        --dist-only) local=0; shift ;;
        --no-dist) dist=0; shift ;;
        --cluster) cluster=1; shift ;;
        -h|--help) sed -n '2,31p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
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

# The temp dir, the children (epmd, the two server nodes of the distribution rows) stopped by
# their pids on exit, the compiled Erlang modules.
. benches/beam/lib.sh
bench_setup freqalloc-beam
out="$tmp/results.jsonl"
: >"$out"

beam() { erl -noshell -pa "$tmp/ebin" -run freqbench main "$@"; }
loadavg() { cut -d' ' -f1-3 /proc/loadavg 2>/dev/null || echo unknown; }
# Labels freqalloc load's JSON summary (its last line) as a Rust allocator result.
label() { tail -n 1 | sed "s|^{|{\"side\":\"rust\",\"workload\":\"alloc/$1\",|"; }
json_list() { printf '%s\n' $1 | paste -sd, -; }

load_start=$(loadavg)
echo "== load average at start: $load_start" >&2

if [ "$local" = 1 ]; then
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
fi

# ------------------------------------------------------------ distribution rows (issue 13)
dist_clients=${BEAM_COMPARE_DIST_CLIENTS:-"1 16 64"}
dist_rust_clients=${BEAM_COMPARE_DIST_RUST_CLIENTS:-"1 4"}
dist_pipeline=${BEAM_COMPARE_DIST_PIPELINE:-16}
dist_out="$tmp/dist.jsonl"
: >"$dist_out"
# The number after "field": in a JSON line, or empty.
field() { sed -n "s/.*\"$1\":\([0-9.eE+-]*\).*/\1/p" | head -n 1; }
# pairs/s of the distribution row side $1, workload $2, clients $3 (rounded), or empty.
pairs() {
    local v
    v=$(grep -F "\"side\":\"$1\"" "$dist_out" | grep -F "\"workload\":\"$2\"" \
        | grep -F "\"clients\":$3," | field pairs_per_sec || true)
    [ -z "$v" ] || printf '%.0f' "$v"
}
dist_rows() {
    local cookie node_pid beam_pid store c
    cookie="bench$(od -An -N8 -tx8 /dev/urandom | tr -d ' ')"
    start_private_epmd compare.sh
    dist_beam() {
        erl -sname "bench$1@localhost" -setcookie "$cookie" -noshell -pa "$tmp/ebin" \
            -run freqbench main dist_clients "$2" "$3" "$seconds" "$4"
    }

    echo "== distribution: BEAM node (frequency_beam, pool $pool) ($seconds s a run)" >&2
    erl -sname freqb@localhost -setcookie "$cookie" -noshell -hidden -pa "$tmp/ebin" \
        -eval "frequency_beam:start_node(0, $((pool - 1)))" >"$tmp/beam-node.out" 2>"$tmp/beam-node.out.err" &
    beam_pid=$!; children+=("$beam_pid")
    wait_ready "$tmp/beam-node.out" "frequency_beam freqb@localhost serving" 60
    for c in $dist_clients; do
        dist_beam "b$c" freqb@localhost "$c" beam | tee -a "$dist_out" >&2
    done
    kill "$beam_pid"; wait "$beam_pid" 2>/dev/null || true

    if ! "$bin" node --help >/dev/null 2>&1; then
        echo "== distribution: this freqalloc has no 'node' command (issue 13 not merged): Rust rows skipped" >&2
        return 0
    fi
    echo "== distribution: freqalloc node (durability none, $big shards, pool $pool) ($seconds s a run)" >&2
    store="$tmp/store-dist"
    "$bin" --data "$store" init --pool "0-$((pool - 1))" --shards "$big" --durability none >/dev/null
    "$bin" --data "$store" node --name freq@localhost --cookie "$cookie" \
        >"$tmp/rust-node.out" 2>"$tmp/rust-node.out.err" &
    node_pid=$!; children+=("$node_pid")
    wait_ready "$tmp/rust-node.out" "freqalloc node freq@localhost serving" 60
    for c in $dist_clients; do
        dist_beam "r$c" freq@localhost "$c" rust | tee -a "$dist_out" >&2
    done
    for c in $dist_rust_clients; do
        FREQALLOC_COOKIE="$cookie" "$bin" load --node freq@localhost --clients "$c" \
            --seconds "$seconds" --json --pipeline "$dist_pipeline" | tail -n 1 \
            | sed "s|^{|{\"side\":\"rust\",\"workload\":\"dist/rust_client\",|" \
            | tee -a "$dist_out" >&2
    done
    kill "$node_pid"; wait "$node_pid" || echo "compare.sh: the freqalloc node exited with $?" >&2
}
# The distribution table: pairs/s per row, Rust/BEAM, target, met or missed. Rust-client rows
# are set against the best BEAM-node figure of any client count.
dist_table() {
    local c b best="" ratio verdict
    printf '%s\n' "| distribution (pairs/s over loopback) | BEAM node | freqalloc node | Rust/BEAM | target | result |"
    printf '%s\n' "|---|---:|---:|---:|---|---|"
    for c in $dist_clients; do
        b=$(pairs beam dist/beam_clients "$c")
        [ -z "$b" ] || best=$(awk -v a="${best:-0}" -v b="$b" 'BEGIN { print (b > a) ? b : a }')
    done
    row() { # label beam rust target
        if [ -n "$2" ] && [ -n "$3" ]; then
            ratio=$(awk -v b="$2" -v r="$3" 'BEGIN { printf "%.2fx", r / b }')
            verdict=$(awk -v b="$2" -v r="$3" -v t="$4" 'BEGIN { print (r / b >= t) ? "met" : "missed" }')
        else
            ratio="-" verdict="not measured"
        fi
        printf '| %s | %s | %s | %s | >= %sx | %s |\n' "$1" "${2:--}" "${3:--}" "$ratio" "$4" "$verdict"
    }
    for c in $dist_clients; do
        row "$c BEAM client processes, gen_server calls" \
            "$(pairs beam dist/beam_clients "$c")" "$(pairs rust dist/beam_clients "$c")" 1.5
    done
    for c in $dist_rust_clients; do
        row "Rust client: load --node --clients $c --pipeline $dist_pipeline, vs best BEAM" \
            "$best" "$(pairs rust dist/rust_client "$c")" 5
    done
}

if [ "$dist" = 1 ]; then
    dist_rows
fi

load_end=$(loadavg)
cpu=$(grep -m1 'model name' /proc/cpuinfo 2>/dev/null | sed 's/.*: //' || true)
otp=$(erl -noshell -eval 'io:format("~s", [erlang:system_info(otp_release)]), halt().')
erts=$(erl -noshell -eval 'io:format("~s", [erlang:system_info(version)]), halt().')
rustc_version=$(rustc --version 2>/dev/null || echo rustc)
printf '{"side":"meta","date":"%s","cpu":"%s","cores":%s,"otp":"%s","erts":"%s","rustc":"%s","load_start":"%s","load_end":"%s","seconds":%s,"pool":%s,"clients":[%s],"shards":[%s],"shard_clients":%s,"dist_clients":[%s]}\n' \
    "$(date -u '+%Y-%m-%d %H:%M UTC')" "${cpu:-unknown}" "$(nproc)" "$otp" "$erts" \
    "$rustc_version" "$load_start" "$load_end" "$seconds" "$pool" \
    "$(json_list "$clients")" "$(json_list "$shards")" "$shard_clients" \
    "$(json_list "$dist_clients")" >>"$out"
echo "== load average at end: $load_end" >&2

# The distribution rows go into the results before the report reads them (its chart of them).
if [ "$dist" = 1 ]; then cat "$dist_out" >>"$out"; fi
if [ "$local" = 1 ]; then
    report_args=("$out")
    [ -n "$markdown" ] && report_args+=(--markdown "$markdown")
    [ -n "$svg_dir" ] && report_args+=(--svg-dir "$svg_dir")
    "$report" "${report_args[@]}"
fi
if [ "$dist" = 1 ]; then
    echo
    dist_table
    if [ -n "$markdown" ]; then
        { echo; echo "## Distribution (issue 13)"; echo
          echo "BEAM client processes on one node call \`{frequency, Node}\` with gen_server allocate +"
          echo "deallocate pairs for $seconds s, over loopback; the BEAM node runs the course's server"
          echo "(\`tests/erl/frequency_beam.erl\`), the freqalloc node a store in durability none."
          echo; dist_table; } >>"$markdown"
    fi
fi
if [ -n "$json_out" ]; then cp "$out" "$json_out"; fi
if [ "$cluster" = 1 ]; then
    cluster_args=(--json "$tmp/cluster.jsonl" --markdown "$tmp/cluster.md")
    [ -n "$svg_dir" ] && cluster_args+=(--svg "$svg_dir/beam-cluster.svg")
    "$root/benches/beam/cluster.sh" "${cluster_args[@]}"
    echo; cat "$tmp/cluster.md"
    if [ -n "$markdown" ]; then
        { echo; echo "## Cluster (issue 14)"; echo; cat "$tmp/cluster.md"; } >>"$markdown"
    fi
    if [ -n "$json_out" ]; then cat "$tmp/cluster.jsonl" >>"$json_out"; fi
fi
