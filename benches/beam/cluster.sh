#!/usr/bin/env bash
# The cluster rows (issue 14): pairs/s (allocate + deallocate) against the number of nodes
# (1, 2, 3 on loopback), of client processes and of replicas (copies of each shard),
# freqalloc against the course's router on BEAM.
#
#   benches/beam/cluster.sh [--json FILE] [--markdown FILE] [--svg FILE] [--replicas "1 2"]
#
# freqalloc side: `init --pool 0-(POOL-1) --shards 6 --nodes n1,..,nN --replicas R
# --durability none` in N data directories, one `freqalloc node` each; the clients talk to node
# 1's `frequency` front end, which routes over all six shards (on N nodes: 1/N of them local,
# the rest over distribution). BEAM side: the same six shards as back-end processes spread
# round N BEAM nodes the same way, behind the course's router on node 1 (freqbench
# cluster_router); the router forwards, the back end answers the client directly.
# Replicas 2, BEAM side (freqbench cluster_router NODES 6 POOL 2): each back end (shard i on
# node i mod N) has a backup process on node (i+1) mod N (with N=1, on the same node) holding
# the same {Free, Allocated} lists; for every allocation or deallocation that succeeds the back
# end sends the change to its backup and waits for the acknowledgement (bounded, 5 s) before it
# answers the client. The router is the same. Replicas 2, freqalloc side: the same `init` with
# `--replicas 2`; an init that refuses (today's main: --nodes with --replicas 2 is not supported
# yet) prints "freqalloc: replicas across nodes refused by init: <its message>; rows skipped" and
# the run goes on; the skipped rows say "not run" in the table and are absent from the JSON.
# Clients: BEAM processes on a client node (freqbench dist_clients), CLUSTER_CLIENTS (default
# "16 64"); and for freqalloc the Rust client `load --node --clients 4 --pipeline 16`.
# Also measured, to split network from shard costs: one pair through a node whose shards are
# all local (N=1) against one whose shards are 2/3 remote (N=3), with one caller.
# Environment: CLUSTER_SECONDS [5] a row, CLUSTER_POOL [600], CLUSTER_CLIENTS ["16 64"],
# CLUSTER_REPLICAS ["1 2"] (1 and/or 2; --replicas overrides it). Every JSON line has
# "cluster_nodes" and "replicas" (a line without "replicas" reads as 1).
# Needs erl, erlc, epmd and a release build (cargo build --release).
set -euo pipefail
cd "$(dirname "$0")/../.."
. benches/beam/lib.sh

json_out="" markdown="" svg=""
while [ $# -gt 0 ]; do
    case "$1" in
        --json) json_out=$2; shift 2 ;;
        --markdown) markdown=$2; shift 2 ;;
        --svg) svg=$2; shift 2 ;;
        --replicas) CLUSTER_REPLICAS=$2; shift 2 ;;
        *) echo "cluster.sh: unknown argument $1" >&2; exit 2 ;;
    esac
done
bin=target/release/freqalloc
[ -x "$bin" ] || { echo "cluster.sh: build first: cargo build --release" >&2; exit 2; }
seconds=${CLUSTER_SECONDS:-5}
pool=${CLUSTER_POOL:-600}
clients=${CLUSTER_CLIENTS:-"16 64"}
replicas=${CLUSTER_REPLICAS:-"1 2"}
for r in $replicas; do
    case "$r" in 1|2) ;; *) echo "cluster.sh: replicas must be 1 or 2, not $r" >&2; exit 2 ;; esac
done
bench_setup freqalloc-cluster
start_private_epmd cluster.sh
cookie="bench$(od -An -N8 -tx8 /dev/urandom | tr -d ' ')"
out="$tmp/cluster.jsonl"
: >"$out"
skipped="$tmp/skipped" # "N R message" per freqalloc configuration not run
: >"$skipped"

stop_children() {
    local pid
    for pid in "$@"; do kill "$pid" 2>/dev/null || true; done
    for pid in "$@"; do wait "$pid" 2>/dev/null || true; done
}
clients_run() { # $1 label, $2 server node, $3 clients, $4 side, $5 nodes, $6 replicas
    erl -sname "bench$1@localhost" -setcookie "$cookie" -noshell -pa "$tmp/ebin" \
        -run freqbench main dist_clients "$2" "$3" "$seconds" "$4" | tail -n 1 \
        | sed "s|^{|{\"cluster_nodes\":$5,\"replicas\":$6,|" | sed 's|"workload":"dist/beam_clients"|"workload":"cluster/beam_clients"|'
}
# Records that freqalloc's rows for N=$1, replicas $2 were not run, with the reason $3.
skip_rows() {
    echo "$1 $2 $3" >>"$skipped"
    echo "freqalloc: $3; rows skipped (nodes $1, replicas $2)" >&2
}

beam_rows() { # $1 nodes, $2 replicas, $3 node names
    local n=$1 r=$2 names=$3 i pids=()
    # BEAM: nodes 2..N host back ends (and backups) only; node 1 is the router and hosts its share.
    for i in $(seq 2 "$n"); do
        erl -sname "cl$i@localhost" -setcookie "$cookie" -noshell -pa "$tmp/ebin" \
            >"$tmp/b$i.out" 2>&1 &
        pids+=($!); children+=($!)
    done
    # Wait for each back-end node to answer epmd.
    for i in $(seq 2 "$n"); do
        for _ in $(seq 1 200); do epmd -port "$ERL_EPMD_PORT" -names 2>/dev/null | grep -q "name cl$i " && break; sleep 0.05; done
    done
    erl -sname cl1@localhost -setcookie "$cookie" -noshell -pa "$tmp/ebin" \
        -run freqbench main cluster_router "$names" 6 "$pool" "$r" >"$tmp/r.out" 2>"$tmp/r.out.err" &
    pids+=($!); children+=($!)
    wait_ready "$tmp/r.out" "cluster_router cl1@localhost serving" 60
    echo "== cluster: BEAM router + back ends over $n node(s), $r replica(s)" >&2
    for c in $clients; do clients_run "b$n$r$c" cl1@localhost "$c" beam "$n" "$r" | tee -a "$out" >&2; done
    stop_children "${pids[@]}"
}

freqalloc_rows() { # $1 nodes, $2 replicas, $3 node names
    local n=$1 r=$2 names=$3 i err pids=()
    echo "== cluster: freqalloc over $n node(s), $r replica(s) (6 shards, durability none)" >&2
    for i in $(seq 1 "$n"); do
        if ! "$bin" --data "$tmp/s$n-$r-$i" init --pool "0-$((pool - 1))" --shards 6 --nodes "$names" \
            --replicas "$r" --durability none >/dev/null 2>"$tmp/init.err"; then
            err=$(tr '\n' ' ' <"$tmp/init.err" | sed 's/^freqalloc: //; s/^Error: //; s/ *$//')
            if [ "$r" -gt 1 ]; then
                skip_rows "$n" "$r" "replicas across nodes refused by init: $err"
                return 0
            fi
            echo "cluster.sh: freqalloc init refused (nodes $n, replicas $r): $err" >&2
            return 1
        fi
    done
    # All nodes first, then their ready lines (a node may wait for its peers before serving).
    for i in $(seq 1 "$n"); do
        "$bin" --data "$tmp/s$n-$r-$i" node --name "cl$i@localhost" --cookie "$cookie" \
            >"$tmp/n$i.out" 2>"$tmp/n$i.out.err" &
        pids+=($!); children+=($!)
    done
    for i in $(seq 1 "$n"); do
        if ! wait_ready "$tmp/n$i.out" "freqalloc node cl$i@localhost serving" 60; then
            [ "$r" -gt 1 ] || return 1
            stop_children "${pids[@]}"
            skip_rows "$n" "$r" "node cl$i@localhost (replicas $r) did not come up: $(tail -n 1 "$tmp/n$i.out.err" 2>/dev/null)"
            return 0
        fi
    done
    for c in $clients; do clients_run "r$n$r$c" cl1@localhost "$c" rust "$n" "$r" | tee -a "$out" >&2; done
    FREQALLOC_COOKIE="$cookie" "$bin" load --node cl1@localhost --clients 4 --pipeline 16 \
        --seconds "$seconds" --json | tail -n 1 \
        | sed "s|^{|{\"side\":\"rust\",\"workload\":\"cluster/rust_client\",\"cluster_nodes\":$n,\"replicas\":$r,|" \
        | tee -a "$out" >&2
    FREQALLOC_COOKIE="$cookie" "$bin" load --node cl1@localhost --clients 1 \
        --seconds "$seconds" --json | tail -n 1 \
        | sed "s|^{|{\"side\":\"rust\",\"workload\":\"cluster/one_caller\",\"cluster_nodes\":$n,\"replicas\":$r,|" \
        | tee -a "$out" >&2
    stop_children "${pids[@]}"
}

for n in 1 2 3; do
    names=$(for i in $(seq 1 $n); do printf 'cl%d@localhost,' "$i"; done | sed 's/,$//')
    for r in $replicas; do
        beam_rows "$n" "$r" "$names"
        freqalloc_rows "$n" "$r" "$names"
    done
done

# The lines of replicas $1 (a line without the field counts as replicas 1).
with_replicas() {
    awk -v r="$1" '{ v = 1; if (match($0, /"replicas":[0-9]+/)) v = substr($0, RSTART + 11, RLENGTH - 11); if (v == r) print }'
}
val() { # $1 side, $2 workload, $3 nodes, $4 clients (or ""), $5 field, $6 replicas
    grep -F "\"side\":\"$1\"" "$out" | grep -F "\"workload\":\"$2\"" \
        | grep -F "\"cluster_nodes\":$3," | with_replicas "$6" \
        | { if [ -n "$4" ]; then grep -F "\"clients\":$4,"; else cat; fi; } \
        | sed -n "s/.*\"$5\":\([0-9.eE+-]*\).*/\1/p" | head -n 1 || true # a row not run: empty
}
is_skipped() { grep -q "^$1 $2 " "$skipped"; } # $1 nodes, $2 replicas
fmt() { # $1 value, $2 printf format; "not run" when skipped ($3 nodes, $4 replicas), else "-" when empty
    # shellcheck disable=SC2059 # the format is this script's own (%.0f or %s)
    if is_skipped "$3" "$4"; then printf 'not run'
    elif [ -z "$1" ]; then printf -- '-'
    else printf "$2" "$1"; fi
}
table() {
    printf '%s\n' "| cluster (pairs/s, loopback, 2 cores) | nodes | replicas | BEAM router | freqalloc | freqalloc/BEAM |"
    printf '%s\n' "|---|---|---|---|---|---|"
    local c n r b f ratio
    for c in $clients; do
        for n in 1 2 3; do
            for r in $replicas; do
                b=$(val beam cluster/beam_clients $n "$c" pairs_per_sec "$r")
                f=$(val rust cluster/beam_clients $n "$c" pairs_per_sec "$r")
                ratio=$(awk -v a="$f" -v b="$b" 'BEGIN { if (a > 0 && b > 0) printf "%.2fx", a / b; else print "-" }')
                printf '| %s BEAM client processes | %s | %s | %s | %s | %s |\n' "$c" "$n" "$r" \
                    "$(fmt "$b" %.0f 0 0)" "$(fmt "$f" %.0f "$n" "$r")" "$ratio"
            done
        done
    done
    for n in 1 2 3; do
        for r in $replicas; do
            printf '| Rust client, 4 x pipeline 16 | %s | %s | - | %s | - |\n' "$n" "$r" \
                "$(fmt "$(val rust cluster/rust_client $n "" pairs_per_sec "$r")" %.0f "$n" "$r")"
        done
    done
    for n in 1 2 3; do
        for r in $replicas; do
            printf '| one Rust caller, p50 latency µs | %s | %s | - | %s | - |\n' "$n" "$r" \
                "$(fmt "$(val rust cluster/one_caller $n "" p50_us "$r")" %s "$n" "$r")"
        done
    done
    if [ -s "$skipped" ]; then
        echo
        cut -d' ' -f3- "$skipped" | sort -u | sed 's/^/"not run": freqalloc /; s/$/./'
    fi
}
echo >&2
table >&2 # (not `tee /dev/stderr`, which truncates a stderr redirected to a file)
[ -z "$json_out" ] || cp "$out" "$json_out"
[ -z "$markdown" ] || table >"$markdown"
if [ -n "$svg" ]; then
    python3 - "$out" "$svg" "$clients" "$replicas" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")]
clients = [int(c) for c in sys.argv[3].split()]
replicas = [int(r) for r in sys.argv[4].split()]
def point(n, r, **want):
    return next((row["pairs_per_sec"] for row in rows if row.get("cluster_nodes") == n
                 and row.get("replicas", 1) == r and all(row.get(k) == v for k, v in want.items())), None)
# (label, colour, replicas, points); a replicas-2 series is dashed in its unreplicated colour.
series = []
blues, reds = ["#1f77b4", "#aec7e8", "#17becf"], ["#d62728", "#ff9896", "#e377c2"]
base = [("beam", "BEAM router", c, "cluster/beam_clients", blues[k % 3]) for k, c in enumerate(clients)] \
    + [("rust", "freqalloc", c, "cluster/beam_clients", reds[k % 3]) for k, c in enumerate(clients)] \
    + [("rust", "freqalloc", None, "cluster/rust_client", "#2ca02c")]
for side, label, c, wl, color in base:
    for r in replicas:
        want = dict(side=side, workload=wl)
        if c is not None:
            want["clients"] = c
        pts = [point(n, r, **want) for n in (1, 2, 3)]
        name = f"{label}, {c} BEAM clients" if c is not None else f"{label}, Rust client 4x16"
        name += f", {r} replica{'s' if r > 1 else ''}"
        if all(p is None for p in pts):
            name += " (not run)"
        series.append((name, color, r, pts))
W, H, L, B, LEG = 900, 380, 70, 40, 330
top = max([p for _, _, _, pts in series for p in pts if p is not None] or [1]) * 1.1
out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" font-size="11">',
       f'<text x="{(W - LEG) / 2}" y="16" text-anchor="middle" font-size="13">pairs/s against cluster nodes (loopback, 2 cores; dashed: 2 replicas)</text>']
x = lambda i: L + i * (W - L - LEG - 20) / 2
y = lambda v: H - B - v / top * (H - B - 30)
for k in range(5):
    v = top * k / 4
    out.append(f'<line x1="{L}" x2="{W-LEG-20}" y1="{y(v):.1f}" y2="{y(v):.1f}" stroke="#ddd"/><text x="{L-5}" y="{y(v)+4:.1f}" text-anchor="end">{v/1000:.0f}K</text>')
for i, n in enumerate((1, 2, 3)):
    out.append(f'<text x="{x(i):.1f}" y="{H-B+15}" text-anchor="middle">{n} node{"s" if n > 1 else ""}</text>')
for j, (name, c, r, pts) in enumerate(series):
    dash = ' stroke-dasharray="6 4"' if r > 1 else ""
    xy = [f"{x(i):.1f},{y(v):.1f}" for i, v in enumerate(pts) if v is not None]
    if xy:
        out.append(f'<polyline fill="none" stroke-width="2" stroke="{c}"{dash} points="{" ".join(xy)}"/>')
    ly = 40 + j * 18
    out.append(f'<line x1="{W-LEG}" x2="{W-LEG+20}" y1="{ly-4}" y2="{ly-4}" stroke-width="2" stroke="{c}"{dash}/><text x="{W-LEG+26}" y="{ly}">{name}</text>')
out.append("</svg>")
open(sys.argv[2], "w").write("\n".join(out))
PY
fi
