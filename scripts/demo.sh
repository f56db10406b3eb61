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

say "a CPU-bound process on node 4 (registered with node 4's mosd)"
python3 -c 'import time; t=time.time()+8
while time.time()<t: pass' &
busy=$!
python3 - "$MOSCLUSTER_DIR/node4" "$busy" <<'PY'
import sys
from pathlib import Path
sys.path.insert(0, ".")
from mosix_core.client import Client
Client(Path(sys.argv[1])).call("register", pid=int(sys.argv[2]))
PY
sleep 3

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
wait "$busy" 2>/dev/null || true

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
