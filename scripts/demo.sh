#!/usr/bin/env bash
# Install everything, then run the main job on the embedded default: a local 4-node MOSIX
# cluster on 127.0.0.1-4 — watch it converge, move a running job from node to node and
# home, ask it questions, kill a node, tear it down.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
export PATH="$(pwd)/.venv/bin:$PATH"
# everything of the demo (the cluster's configuration and logs, the jobs' files) lives
# here, and goes when the demo ends, however it ends
work=$(mktemp -d /tmp/mosix-demo.XXXXXX)
chmod 755 "$work"                 # the guests' hosts (uids of their own) reach the cluster's sockets
export MOSCLUSTER_DIR="$work/cluster"
cleanup() {
    local pid
    for pid in $(jobs -p); do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    moscluster down >/dev/null 2>&1 || true
    rm -rf "$work"
}
trap cleanup EXIT

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
on() { local k=$1; shift; moscluster exec "$k" -- "$@"; }
# where the MOSIX process $1 of node 1 runs, as mosps shows it (WHERE)
where_is() { on 1 mosps | awk -v pid="$1" '$1 == pid { print $2 }'; }
wait_where() {
    local _
    for _ in $(seq 1 100); do [ "$(where_is "$1")" = "$2" ] && return 0; sleep 0.1; done
    echo "demo: process $1 did not reach $2" >&2
    return 1
}

say "moscluster up: 4 nodes on 127.0.0.1-4 (speeds 10000, 20000, 10000, 5000)"
moscluster up --nodes 4 --speeds 10000,20000,10000,5000 --interval 0.5
for _ in $(seq 1 40); do
    [ "$(moscluster status | grep -c 'sees 4/4')" -eq 4 ] && break
    sleep 0.25
done
moscluster status

say "migration: a job started on node 1 moves to node 2, on to node 3, and home, while it runs"
# 1000 lines, each after a little arithmetic: ~25 s of CPU. The same program runs natively
# meanwhile; the MOSIX run's output must be the same, byte for byte.
job='BEGIN { for (i = 0; i < 1000; i++) { for (j = 0; j < 200000; j++) s += j % 7; printf "%d %d\n", i, s; fflush() } }'
awk "$job" > "$work/native.txt" &
native=$!
moscluster exec 1 -- mosrun awk "$job" > "$work/mosix.txt" &      # $! is the MOSIX process
moving=$!
wait_where "$moving" here
on 1 mosps -n
for node in 2 3 home; do
    sleep 1
    echo "\$ mosmigrate $moving $node        (on node 1, its home)"
    on 1 mosmigrate "$moving" "$node"
    wait_where "$moving" "$([ "$node" = home ] && echo here || echo "$node")"
    on 1 mosps -n
    case $node in
        home) ;;
        *) sleep 1.5
           echo "\$ mosps -V                       (on node $node: its guest)"
           on "$node" mosps -V
           echo "\$ mosmon --once -t               (the load follows the job)"
           on 1 mosmon --once -t ;;
    esac
done
wait "$moving"
wait "$native"
if cmp -s "$work/native.txt" "$work/mosix.txt"; then
    echo "output after 3 migrations: $(wc -l < "$work/mosix.txt") lines, the same as the native run: OK"
else
    echo "output after 3 migrations differs from the native run: FAILED"
    diff "$work/native.txt" "$work/mosix.txt" | head -5
fi

say "mosrun on node 4: a CPU-bound awk, and a queue of 3 jobs, as MOSIX processes"
moscluster exec 4 -- mosrun -m20 awk 'BEGIN { while (n++ < 4e8) s += n }' &
busy=$!
printf 'sleep 4\nexit 3\nsleep 4\n' > "$work/jobs.txt"
on 4 mosrun -S2 "$work/jobs.txt,$work/failed.txt" &
queue=$!
sleep 1.5
say "mosps on node 4 (with NMIGS), and the queue's progress (mosps -S)"
on 4 mosps -n
on 4 mosps -S
on 4 mostimeof "$busy"
sleep 1.5

say "mosmon (node 1's view): load"
on 1 mosmon --once -t
say "mosmon: speeds"
on 1 mosmon --once -s
say "mosmon: memory"
on 1 mosmon --once -m

say "mosbestnode (on node 1): where should a new process start?"
on 1 mosbestnode -n
say "mosctl status 3 (asked on node 1)"
on 1 mosctl status 3
say "mosctl rstatus 4: status load availability speed ncpus frozen mem-avail mem-total swap-free swap-total privileged procs"
on 1 mosctl rstatus 4
say "moskillall on node 4 (SIGTERM to every MOSIX process there)"
on 4 moskillall || true
wait "$busy" 2>/dev/null || true
wait "$queue" 2>/dev/null || echo "the queue ended with $? failed lines: $(tr '\n' ';' < "$work/failed.txt")"

say "kill node 3's daemon, and watch the others notice"
moscluster stop 3
for _ in $(seq 1 60); do
    on 1 mosctl status 3 | grep -q "Not responding" && break
    sleep 0.25
done
on 1 mosctl status 3
on 1 mosmon --once -d
moscluster status

say "moscluster down"
moscluster down
moscluster status || true
