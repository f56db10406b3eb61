#!/usr/bin/env bash
# Install everything mosix-py needs on a fresh Debian machine with Python:
# Debian packages (when missing), a virtual environment in .venv, the package itself.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v tmux >/dev/null 2>&1 || need_apt+=(tmux)            # the real-terminal test of mosmon
command -v gcc >/dev/null 2>&1 || need_apt+=(gcc)              # C test programs, cffi helpers
python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || need_apt+=(python3-venv python3-pip)
if [ ${#need_apt[@]} -gt 0 ]; then
    if [ "$(id -u)" -ne 0 ]; then
        echo "install.sh: needs these Debian packages: ${need_apt[*]} (run as root, or install them)" >&2
        exit 1
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
# A "strict" editable install: a plain path entry to a tree of links into the source,
# where the default mode installs an import hook whose own imports cost every command
# ~20 ms at start (mosrun's start-up is a benchmarked figure). Edits show at once; a
# new module file needs this script again.
.venv/bin/python -m pip install -q --disable-pip-version-check -e '.[test]' \
    --config-settings editable_mode=strict 2>&1 | grep -v "^WARNING: Location" || true
# The guest's trap loop in C (cffi): without it a guest host runs its Python loop alone.
.venv/bin/python -m mosix_core.remote.trap_build >/dev/null || echo "install.sh: going on without the C trap loop" >&2
# Compiled bytecode, as an installed package has it: with PYTHONDONTWRITEBYTECODE set
# (some environments do) every command would otherwise compile its modules afresh.
.venv/bin/python -m compileall -q -j 0 build/__editable__.* >/dev/null || true
.venv/bin/python -c 'import mosix_core, mosix_plugins' || { echo "install.sh: installation failed" >&2; exit 1; }
echo "mosix-py installed in $(pwd)/.venv (commands in .venv/bin)"
