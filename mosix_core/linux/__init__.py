"""Chokepoints for low-level Linux interfaces: one module per concern (ptrace,
seccomp, process memory), each turning errno into :class:`mosix_core.errors.TraceError`."""
