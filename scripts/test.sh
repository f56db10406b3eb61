#!/usr/bin/env bash
# Install everything, then run the whole test suite (unit tests, and cluster tests on real daemons).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
export PATH="$(pwd)/.venv/bin:$PATH"
exec .venv/bin/python -m pytest tests -q -p no:cacheprovider "$@"
