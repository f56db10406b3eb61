"""Turning a node's status (as mosd reports it) into what the tools print."""

from __future__ import annotations

from typing import Any

from mosix_core.cluster.gossip import ST_ACCEPTS, ST_BLOCK, ST_LSTAY, ST_STAY, STANDARD_SPEED

RSTATUS_FIELDS = (
    "status",
    "load",
    "availability",
    "speed",
    "ncpus",
    "frozen",
    "mem_avail_pages",
    "mem_total_pages",
    "swap_free_tenths",
    "swap_total_tenths",
    "privileged_pages",
    "nprocs",
)


def rstatus_integers(node: dict[str, Any]) -> list[int]:
    """The integers of ``mosctl rstatus``, in the manual's order."""
    return [int(node[f]) for f in RSTATUS_FIELDS]


def condition(node: dict[str, Any]) -> str:
    if node.get("off"):
        return "MOSIX is turned off (mossetpe -off)"
    if node["alive"]:
        return "Running Normally"
    if node["known"]:
        return "Not responding (presumed dead)"
    return "No information (not heard from yet)"


def status_lines(node: dict[str, Any]) -> list[str]:
    """``mosctl status``: the user-friendly summary of one node."""
    lines = [f"Status: {condition(node)}"]
    if not node["alive"]:
        return lines
    load = node["load"] / 100
    processes = load * node["ncpus"] * node["speed"] / STANDARD_SPEED
    lines += [
        f"Load: {load:.2f} (equivalent to about {processes:.2f} CPU processes)",
        f"Speed: {node['speed']} units",
        f"CPUS: {node['ncpus']}",
        f"Frozen: {node['frozen']}",
        f"Avail: {'YES' if node['availability'] == 65535 else node['availability']}",
        f"Procs: Running {node['nprocs']} MOSIX processes",
        "Accept: "
        + (
            "Yes, will welcome processes from here"
            if node["status"] & ST_ACCEPTS
            else "No, will not accept processes from here"
        ),
        f"Memory: Available {mb(node['mem_avail_pages'])}MB/{mb(node['mem_total_pages'])}MB",
    ]
    modes = [
        name for bit, name in ((ST_STAY, "stay"), (ST_LSTAY, "lstay"), (ST_BLOCK, "block")) if node["status"] & bit
    ]
    if modes:
        lines.append("Mode: " + " ".join(modes))
    return lines


def localstatus_lines(report: dict[str, Any]) -> list[str]:
    """``mosctl localstatus``: the status plus what only the local node knows."""
    node, daemon = report["node"], report["daemon"]
    lines = status_lines(node)
    if node["alive"]:
        lines.insert(
            -1 if lines[-1].startswith("Mode:") else len(lines),
            f"Swap: Available {node['swap_free_tenths'] / 10:.1f}GB/{node['swap_total_tenths'] / 10:.1f}GB",
        )
    stats = daemon["stats"]
    lines += [
        "Daemons:",
        f"        MOSIX Daemon : Up (pid {daemon['pid']}, up {daemon['uptime']:.0f}s)",
        f"        Gossip       : UDP {daemon['udp_port']}, every {daemon['gossip_interval']}s, "
        f"{daemon['window']} entries/message, dead after {daemon['dead_after']:.1f}s",
        f"        Peer Listener: {'Up' if daemon['peer_server'] else 'Down'} (TCP {daemon['tcp_port']})",
        f"Messages: sent {stats['sent']} (probes {stats.get('probes', 0)}), received {stats['received']}, "
        f"authentication failures {stats['auth_failures']}, garbled {stats['garbled']}",
        f"Processes: {report['processes']['local']} local, {report['processes']['guests']} guests, "
        f"{report['processes']['frozen']} frozen",
    ]
    moves = report["processes"].get("automatic")
    if moves is not None:
        lines.append(
            f"Automatic migration: {'on' if moves['on'] else 'off'}; moved out {moves['out']}, "
            f"arrived {moves['arrived']}, failed {moves['failed']}"
        )
    limit = report.get("maxguests")
    lines.append(
        f"Guest processes from other clusters: {report['processes']['guests']}/"
        f"{'unlimited' if limit is None else limit}"
    )
    lines.append("Plugins: " + ", ".join(daemon["plugins"]))
    lines += [f"{label}: {value}" for label, value in report.get("extra", [])]
    return lines


def mb(pages: int) -> int:
    return pages * 4096 // (1024 * 1024)
