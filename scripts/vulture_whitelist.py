"""Names vulture cannot see used: read by something that is not Python code
(scripts/lint.sh passes this file to vulture with the sources; it is never run).
Keep it short: a name that is really unused is removed, not listed here."""

from mosix_core.cli import mosrun
from mosix_core.linux.ptrace import Registers

# console scripts: pyproject.toml [project.scripts] calls them
mosrun.mosenv_main
mosrun.mosnative_main

# written into a tracee's registers: the kernel reads them (PTRACE_SETREGS)
Registers.rdi
Registers.r8
Registers.r9
Registers.r10

# values the kernel or the C trap loop defines: kept beside the ones we compare against,
# so that each table reads as the interface it mirrors
from mosix_core.linux import ptrace
from mosix_core.remote import fastpath

ptrace.INFO_ENTRY  # PTRACE_SYSCALL_INFO op (we compare against INFO_EXIT and INFO_SECCOMP)
ptrace.Stop.core  # WCOREDUMP of a killed process's wait status
fastpath.INTERRUPTED  # trap_loop.c's result codes (an interrupted wait ends as a STOP)
