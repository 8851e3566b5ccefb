# Shared by compare.sh and dist_ab.sh (sourced, not run): the temp dir with its cleanup and
# the compiled Erlang modules, a private epmd, and waiting for a child's readiness line.
# The caller sets `set -euo pipefail` and `cd`s to the repository root first.

# Makes "$tmp" (named after $1) with the Erlang modules compiled in "$tmp/ebin", and
# `children` (pids started in the background), stopped by their pids and the dir removed on
# exit.
bench_setup() {
    tmp=$(mktemp -d "${TMPDIR:-/tmp}/$1.XXXXXX")
    children=()
    trap bench_cleanup EXIT
    mkdir "$tmp/ebin"
    erlc -o "$tmp/ebin" benches/beam/freqbench.erl tests/erl/frequency_beam.erl
}
bench_cleanup() {
    local pid
    for pid in "${children[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${children[@]}"; do wait "$pid" 2>/dev/null || true; done
    rm -rf "$tmp"
}

# Starts a private epmd on a free loopback port (tries a few, keeps the first that stays up),
# adds it to `children` and exports ERL_EPMD_PORT. $1 names the caller in the error.
start_private_epmd() {
    local p epmd_pid epmd_port=""
    for p in $(shuf -i 20000-60000 -n 10); do
        epmd -port "$p" -address 127.0.0.1 &
        epmd_pid=$!
        sleep 0.2
        if kill -0 "$epmd_pid" 2>/dev/null && epmd -port "$p" -names >/dev/null 2>&1; then
            children+=("$epmd_pid"); epmd_port=$p; break
        fi
        wait "$epmd_pid" 2>/dev/null || true
    done
    [ -n "$epmd_port" ] || { echo "$1: could not start a private epmd" >&2; return 1; }
    export ERL_EPMD_PORT=$epmd_port
}

# Waits up to $3 seconds for a line starting with $2 in file $1 (a child's stdout); else
# prints the child's output and fails.
wait_ready() {
    local i
    for ((i = 0; i < $3 * 20; i++)); do
        grep -q "^$2" "$1" 2>/dev/null && return 0
        sleep 0.05
    done
    echo "no line '$2' in $1 after $3 s:" >&2
    cat "$1" "$1.err" >&2 2>/dev/null || true
    return 1
}
