#!/usr/bin/env bash
# Install everything mosix-py needs on a fresh Debian machine with Python:
# Debian packages (when missing), a virtual environment in .venv, the package itself.
set -euo pipefail
cd "$(dirname "$0")/.."

# mosix-py serves every user of the node (mosrun is everybody's command; guests run as
# unprivileged users), so its interpreter must be one every user can run. Debian's own
# /usr/bin/python3 is; one under /root (pyenv, a root-only virtualenv) is not, and a venv
# made from it would answer "Permission denied" to everyone but root.
PYTHON=/usr/bin/python3
need_apt=()
command -v tmux >/dev/null 2>&1 || need_apt+=(tmux)            # the real-terminal test of mosmon
command -v gcc >/dev/null 2>&1 || need_apt+=(gcc)              # C test programs, cffi helpers
[ -x "$PYTHON" ] || need_apt+=(python3)
# libseccomp's system-call table checks ours (tests/unit/test_syscall_names.py); apt itself
# depends on it, so it is nearly always there already
/sbin/ldconfig -p 2>/dev/null | grep -q 'libseccomp\.so\.2 ' || need_apt+=(libseccomp2)
# the everyday programs the corpus tests run natively and under mosrun (issue 18)
for pair in bc:bc dc:dc sqlite3:sqlite3 zstd:zstd xz:xz-utils bzip2:bzip2 gawk:gawk mawk:mawk git:git \
            make:make openssl:openssl perl:perl; do
    command -v "${pair%%:*}" >/dev/null 2>&1 || need_apt+=("${pair#*:}")
done
[ -f /usr/include/python3.11/Python.h ] || [ -n "$(ls /usr/include/python3*/Python.h 2>/dev/null)" ] \
    || need_apt+=(python3-dev)                                 # the C trap loop (cffi) compiles against it
"$PYTHON" -c 'import ensurepip, venv' >/dev/null 2>&1 || need_apt+=(python3-venv python3-pip)
if [ ${#need_apt[@]} -gt 0 ]; then
    if [ "$(id -u)" -ne 0 ]; then
        echo "install.sh: needs these Debian packages: ${need_apt[*]} (run as root, or install them)" >&2
        exit 1
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
    echo "install.sh: mosix-py needs Python 3.11 or newer as $PYTHON (Debian 12 or later)" >&2
    exit 1
fi
# a venv left by an earlier install on another interpreter (or one only root can run) is made anew
if [ -x .venv/bin/python ] && [ "$(readlink -f .venv/bin/python)" != "$(readlink -f "$PYTHON")" ]; then
    rm -rf .venv build/__editable__.*
fi
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
# every user must reach the tree too (a umask of 077 would leave it root's alone)
chmod -R a+rX .venv . 2>/dev/null || true
# A "strict" editable install: a plain path entry to a tree of links into the source,
# where the default mode installs an import hook whose own imports cost every command
# ~20 ms at start (mosrun's start-up is a benchmarked figure). Edits show at once; a
# new module file needs this script again.
# pip speaks only when something goes wrong; then everything it said is shown, and the
# install stops there: what follows needs the packages it failed to install.
pip_log=$(mktemp)
trap 'rm -f "$pip_log"' EXIT
if ! .venv/bin/python -m pip install -q --disable-pip-version-check -e '.[test]' \
        --config-settings editable_mode=strict >"$pip_log" 2>&1; then
    grep -v "^WARNING: Location" "$pip_log" >&2 || true
    echo "install.sh: pip could not install mosix-py's Python packages into $(pwd)/.venv (pip's messages are above)." >&2
    echo "install.sh: check that this machine reaches the package index (or set PIP_INDEX_URL), then run scripts/install.sh again." >&2
    exit 1
fi
grep -v "^WARNING: Location" "$pip_log" >&2 || true
# The guest's trap loop in C (cffi): without it a guest host runs its Python loop alone.
if ! trap_error=$(.venv/bin/python -m mosix_core.remote.trap_build 2>&1 >/dev/null); then
    echo "install.sh: the C trap loop did not build ($(printf '%s\n' "$trap_error" | tail -n 1)); guests run the slower Python loop" >&2
fi
# Compiled bytecode, as an installed package has it: with PYTHONDONTWRITEBYTECODE set
# (some environments do) every command would otherwise compile its modules afresh.
.venv/bin/python -m compileall -q -j 0 build/__editable__.* >/dev/null || true
.venv/bin/python -c 'import mosix_core, mosix_plugins' || { echo "install.sh: installation failed" >&2; exit 1; }
chmod -R a+rX .venv build 2>/dev/null || true
if [ "$(id -u)" -eq 0 ] && ! runuser -u nobody -- .venv/bin/python -c 'import mosix_core' 2>/dev/null; then
    echo "install.sh: other users cannot run mosix-py from $(pwd) (is a parent directory private?)" >&2
    exit 1
fi
echo "mosix-py installed in $(pwd)/.venv (commands in .venv/bin)"
