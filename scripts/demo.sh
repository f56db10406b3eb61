#!/usr/bin/env bash
# Install everything, then run the main job on the embedded default: a local 4-node MOSIX
# cluster on 127.0.0.1-4 — watch it converge, ask it questions, kill a node, tear it down.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
export PATH="$(pwd)/.venv/bin:$PATH"
export MOSCLUSTER_DIR="${MOSCLUSTER_DIR:-/tmp/mosix-demo-$(id -u)}"
trap 'moscluster down >/dev/null 2>&1 || true' EXIT

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
on() { local k=$1; shift; moscluster exec "$k" -- "$@"; }

say "moscluster up: 4 nodes on 127.0.0.1-4 (speeds 10000, 20000, 10000, 5000)"
moscluster up --nodes 4 --speeds 10000,20000,10000,5000 --interval 0.5
for _ in $(seq 1 40); do
    [ "$(moscluster status | grep -c 'sees 4/4')" -eq 4 ] && break
    sleep 0.25
done
moscluster status

say "mosrun on node 4: a CPU-bound awk, and a queue of 3 jobs, as MOSIX processes"
export LC_ALL=C      # UTF-8 locales need mosrun -e (glibc maps its gconv cache MAP_SHARED)
on 4 mosrun -m20 awk 'BEGIN { while (n++ < 4e8) s += n }' &
busy=$!
printf 'sleep 4\nexit 3\nsleep 4\n' > "$MOSCLUSTER_DIR/jobs.txt"
on 4 mosrun -S2 "$MOSCLUSTER_DIR/jobs.txt,$MOSCLUSTER_DIR/failed.txt" &
queue=$!
sleep 1.5
say "mosps on node 4 (with NMIGS), and the queue's progress (mosps -S)"
on 4 mosps -n
on 4 mosps -S
on 4 mostimeof "$(pgrep -n -x awk)"
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
wait "$queue" 2>/dev/null || echo "the queue ended with $? failed lines: $(tr '\n' ';' < "$MOSCLUSTER_DIR/failed.txt")"

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
trap - EXIT
