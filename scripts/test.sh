#!/usr/bin/env bash
# Install everything, then run the whole test suite (unit tests, and cluster tests on real daemons).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
export PATH="$(pwd)/.venv/bin:$PATH"

status=0
# pytest's "no tests ran" (5) is no failure when options select tests of the other part only
run() { "$@" || { local rc=$?; [ "$rc" -eq 5 ] || status=$rc; }; }

# The code's habits first (ruff lint and format, vulture, mypy): a new finding fails CI
run bash scripts/lint.sh

run .venv/bin/python -m pytest tests -q -p no:cacheprovider --ignore=tests/security "$@"

# The attacks (tests/security) run in network and PID namespaces of their own: nothing
# they do — a guest's kill(-1), a flood on loopback, a squatted socket name — can reach
# the machine's other processes or services. Without the rights for that, they run here.
security=(.venv/bin/python -m pytest tests/security -q -p no:cacheprovider "$@")
if [ "$(id -u)" -eq 0 ] && unshare --net --pid --fork --mount-proc true 2>/dev/null; then
    run unshare --net --pid --fork --mount-proc -- sh -c 'ip link set lo up && exec "$@"' sh "${security[@]}"
else
    echo "test.sh: no namespaces here (needs root): the security tests share the machine's network" >&2
    run "${security[@]}"
fi
exit "$status"
