"""mosix-py: the MOSIX-4 cluster management system, re-implemented in Python.

The kernel (this package) holds only IPC, the process table and the hook bus;
every feature is a plugin (see ``mosix_core.contract.hookspecs``).
"""

__version__ = "0.1.0"
# MOSIX compatibility: nodes must agree on the first two digits (see the FAQ).
PROTOCOL_VERSION = 4
