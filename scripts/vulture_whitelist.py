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
