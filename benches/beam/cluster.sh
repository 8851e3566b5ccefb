#!/usr/bin/env bash
# The cluster rows (issue 14): pairs/s (allocate + deallocate) against the number of nodes
# (1, 2, 3 on loopback) and of client processes, freqalloc against the course's router on BEAM.
#
#   benches/beam/cluster.sh [--json FILE] [--markdown FILE] [--svg FILE]
#
# freqalloc side: `init --pool 0-(POOL-1) --shards 6 --nodes n1,..,nN --durability none` in N
# data directories, one `freqalloc node` each; the clients talk to node 1's `frequency` front
# end, which routes over all six shards (on N nodes: 1/N of them local, the rest over
# distribution). BEAM side: the same six shards as back-end processes spread round N BEAM
# nodes the same way, behind the course's router on node 1 (freqbench cluster_router); the
# router forwards, the back end answers the client directly.
# Clients: BEAM processes on a client node (freqbench dist_clients), CLUSTER_CLIENTS (default
# "16 64"); and for freqalloc the Rust client `load --node --clients 4 --pipeline 16`.
# Also measured, to split network from shard costs: one pair through a node whose shards are
# all local (N=1) against one whose shards are 2/3 remote (N=3), with one caller.
# Needs erl, erlc, epmd and a release build (cargo build --release). No replicas: a shard's
# backup on another node is not built yet (see the README's "Cluster").
set -euo pipefail
cd "$(dirname "$0")/../.."
. benches/beam/lib.sh

json_out="" markdown="" svg=""
while [ $# -gt 0 ]; do
    case "$1" in
        --json) json_out=$2; shift 2 ;;
        --markdown) markdown=$2; shift 2 ;;
        --svg) svg=$2; shift 2 ;;
        *) echo "cluster.sh: unknown argument $1" >&2; exit 2 ;;
    esac
done
bin=target/release/freqalloc
[ -x "$bin" ] || { echo "cluster.sh: build first: cargo build --release" >&2; exit 2; }
seconds=${CLUSTER_SECONDS:-5}
pool=${CLUSTER_POOL:-600}
clients=${CLUSTER_CLIENTS:-"16 64"}
bench_setup freqalloc-cluster
start_private_epmd cluster.sh
cookie="bench$(od -An -N8 -tx8 /dev/urandom | tr -d ' ')"
out="$tmp/cluster.jsonl"
: >"$out"

stop_children() {
    local pid
    for pid in "$@"; do kill "$pid" 2>/dev/null || true; done
    for pid in "$@"; do wait "$pid" 2>/dev/null || true; done
}
clients_run() { # $1 label, $2 server node, $3 clients, $4 side, $5 nodes
    erl -sname "bench$1@localhost" -setcookie "$cookie" -noshell -pa "$tmp/ebin" \
        -run freqbench main dist_clients "$2" "$3" "$seconds" "$4" | tail -n 1 \
        | sed "s|^{|{\"cluster_nodes\":$5,|" | sed 's|"workload":"dist/beam_clients"|"workload":"cluster/beam_clients"|'
}

for n in 1 2 3; do
    names=$(for i in $(seq 1 $n); do printf 'cl%d@localhost,' "$i"; done | sed 's/,$//')
    # BEAM: nodes 2..N host back ends only; node 1 is the router and hosts its share.
    pids=()
    for i in $(seq 2 $n); do
        erl -sname "cl$i@localhost" -setcookie "$cookie" -noshell -pa "$tmp/ebin" \
            >"$tmp/b$i.out" 2>&1 &
        pids+=($!); children+=($!)
    done
    # Wait for each back-end node to answer epmd.
    for i in $(seq 2 $n); do
        for _ in $(seq 1 200); do epmd -port "$ERL_EPMD_PORT" -names 2>/dev/null | grep -q "name cl$i " && break; sleep 0.05; done
    done
    erl -sname cl1@localhost -setcookie "$cookie" -noshell -pa "$tmp/ebin" \
        -run freqbench main cluster_router "$names" 6 "$pool" >"$tmp/r.out" 2>"$tmp/r.out.err" &
    pids+=($!); children+=($!)
    wait_ready "$tmp/r.out" "cluster_router cl1@localhost serving" 60
    echo "== cluster: BEAM router + back ends over $n node(s)" >&2
    for c in $clients; do clients_run "b$n$c" cl1@localhost "$c" beam "$n" | tee -a "$out" >&2; done
    stop_children "${pids[@]}"

    echo "== cluster: freqalloc over $n node(s) (6 shards, durability none)" >&2
    pids=()
    for i in $(seq 1 $n); do
        "$bin" --data "$tmp/s$n-$i" init --pool "0-$((pool - 1))" --shards 6 --nodes "$names" \
            --durability none >/dev/null
    done
    for i in $(seq 1 $n); do
        "$bin" --data "$tmp/s$n-$i" node --name "cl$i@localhost" --cookie "$cookie" \
            >"$tmp/n$i.out" 2>"$tmp/n$i.out.err" &
        pids+=($!); children+=($!)
        wait_ready "$tmp/n$i.out" "freqalloc node cl$i@localhost serving" 60
    done
    for c in $clients; do clients_run "r$n$c" cl1@localhost "$c" rust "$n" | tee -a "$out" >&2; done
    FREQALLOC_COOKIE="$cookie" "$bin" load --node cl1@localhost --clients 4 --pipeline 16 \
        --seconds "$seconds" --json | tail -n 1 \
        | sed "s|^{|{\"side\":\"rust\",\"workload\":\"cluster/rust_client\",\"cluster_nodes\":$n,|" \
        | tee -a "$out" >&2
    FREQALLOC_COOKIE="$cookie" "$bin" load --node cl1@localhost --clients 1 \
        --seconds "$seconds" --json | tail -n 1 \
        | sed "s|^{|{\"side\":\"rust\",\"workload\":\"cluster/one_caller\",\"cluster_nodes\":$n,|" \
        | tee -a "$out" >&2
    stop_children "${pids[@]}"
done

val() { # $1 side, $2 workload, $3 nodes, $4 clients (or ""), $5 field
    grep -F "\"side\":\"$1\"" "$out" | grep -F "\"workload\":\"$2\"" \
        | grep -F "\"cluster_nodes\":$3," | { if [ -n "$4" ]; then grep -F "\"clients\":$4,"; else cat; fi; } \
        | sed -n "s/.*\"$5\":\([0-9.eE+-]*\).*/\1/p" | head -n 1
}
table() {
    printf '%s\n' "| cluster (pairs/s, loopback, 2 cores) | nodes | BEAM router | freqalloc | freqalloc/BEAM |"
    printf '%s\n' "|---|---|---|---|---|"
    for c in $clients; do
        for n in 1 2 3; do
            b=$(val beam cluster/beam_clients $n "$c" pairs_per_sec)
            r=$(val rust cluster/beam_clients $n "$c" pairs_per_sec)
            ratio=$(awk -v a="$r" -v b="$b" 'BEGIN { if (b > 0) printf "%.2fx", a / b; else print "-" }')
            printf '| %s BEAM client processes | %s | %.0f | %.0f | %s |\n' "$c" "$n" "${b:-0}" "${r:-0}" "$ratio"
        done
    done
    for n in 1 2 3; do
        printf '| Rust client, 4 x pipeline 16 | %s | - | %.0f | - |\n' "$n" "$(val rust cluster/rust_client $n "" pairs_per_sec)"
    done
    for n in 1 2 3; do
        printf '| one Rust caller, p50 latency µs | %s | - | %s | - |\n' "$n" "$(val rust cluster/one_caller $n "" p50_us)"
    done
}
echo >&2
table | tee /dev/stderr >/dev/null
[ -z "$json_out" ] || cp "$out" "$json_out"
[ -z "$markdown" ] || table >"$markdown"
if [ -n "$svg" ]; then
    python3 - "$out" "$svg" "$clients" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")]
clients = [int(c) for c in sys.argv[3].split()]
series = []
for side, wl, label in [("beam", "cluster/beam_clients", "BEAM router"), ("rust", "cluster/beam_clients", "freqalloc")]:
    for c in clients:
        pts = [next((r["pairs_per_sec"] for r in rows if r["side"] == side and r["workload"] == wl
                     and r["cluster_nodes"] == n and r["clients"] == c), 0) for n in (1, 2, 3)]
        series.append((f"{label}, {c} BEAM clients", pts))
series.append(("freqalloc, Rust client 4x16", [next((r["pairs_per_sec"] for r in rows if r["workload"] == "cluster/rust_client" and r["cluster_nodes"] == n), 0) for n in (1, 2, 3)]))
W, H, L, B = 640, 360, 70, 40
top = max(max(p) for _, p in series) * 1.1 or 1
colors = ["#1f77b4", "#aec7e8", "#d62728", "#ff9896", "#2ca02c"]
out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" font-size="11">',
       f'<text x="{W/2}" y="16" text-anchor="middle" font-size="13">pairs/s against cluster nodes (loopback, 2 cores)</text>']
x = lambda i: L + i * (W - L - 180) / 2
y = lambda v: H - B - v / top * (H - B - 30)
for k in range(5):
    v = top * k / 4
    out.append(f'<line x1="{L}" x2="{W-180}" y1="{y(v):.1f}" y2="{y(v):.1f}" stroke="#ddd"/><text x="{L-5}" y="{y(v)+4:.1f}" text-anchor="end">{v/1000:.0f}K</text>')
for i, n in enumerate((1, 2, 3)):
    out.append(f'<text x="{x(i):.1f}" y="{H-B+15}" text-anchor="middle">{n} node{"s" if n > 1 else ""}</text>')
for j, (name, pts) in enumerate(series):
    c = colors[j % len(colors)]
    out.append('<polyline fill="none" stroke-width="2" stroke="%s" points="%s"/>' % (c, " ".join(f"{x(i):.1f},{y(v):.1f}" for i, v in enumerate(pts))))
    out.append(f'<rect x="{W-170}" y="{40+j*18}" width="10" height="10" fill="{c}"/><text x="{W-155}" y="{49+j*18}">{name}</text>')
out.append("</svg>")
open(sys.argv[2], "w").write("\n".join(out))
PY
fi
