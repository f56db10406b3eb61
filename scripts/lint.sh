#!/usr/bin/env bash
# The code's habits, checked: ruff (lint and format check), vulture (dead code, with
# scripts/vulture_whitelist.py), mypy (the typed modules named in pyproject.toml).
# Settings live in pyproject.toml. Exit status: 0 when all three are clean.
#   scripts/lint.sh            everything
#   scripts/lint.sh ruff|format|vulture|mypy ...   only those
set -uo pipefail
cd "$(dirname "$0")/.."
bin=.venv/bin
for tool in ruff vulture mypy; do
    [ -x "$bin/$tool" ] || { echo "lint.sh: $bin/$tool is missing: run scripts/install.sh" >&2; exit 2; }
done
checks=("$@")
[ ${#checks[@]} -gt 0 ] || checks=(ruff format vulture mypy)
failed=()
for check in "${checks[@]}"; do
    echo "== $check"
    case $check in
        ruff) "$bin/ruff" check --quiet . ;;
        format) "$bin/ruff" format --check --quiet . ;;
        # tests and benchmarks count as users of the package's names, but their own
        # unused names are not reported (pytest fixtures, parametrized arguments...)
        vulture) unused=$("$bin/vulture" | grep -v -e '^tests/' -e '^bench/')
                 [ -z "$unused" ] || { printf '%s\n' "$unused"; false; } ;;
        mypy) "$bin/mypy" ;;
        *) echo "lint.sh: no check named $check (ruff, format, vulture, mypy)" >&2; exit 2 ;;
    esac || failed+=("$check")
done
if [ ${#failed[@]} -gt 0 ]; then
    echo "lint.sh: findings from: ${failed[*]}" >&2
    exit 1
fi
echo "lint.sh: clean"
