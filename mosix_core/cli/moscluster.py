"""moscluster — a local multi-node MOSIX cluster on loopback addresses (the embedded default)."""

from __future__ import annotations

import os
from pathlib import Path

import typer

from mosix_core.cli.common import new_app, print_json, reports_errors, run
from mosix_core.cluster import localcluster
from mosix_core.daemon import protocol as p
from mosix_core.daemon.client import Client
from mosix_core.errors import DaemonUnavailable, MosixError

app = new_app("Run a whole MOSIX cluster on this machine: one mosd per 127.0.0.K address.")
RootOption = typer.Option(
    None, "--dir", help="where the cluster lives (default $MOSCLUSTER_DIR or /tmp/moscluster-UID)"
)


def root_of(path: Path | None) -> Path:
    return path or localcluster.default_root()


def parse_speeds(text: str | None) -> list[int]:
    if not text:
        return []
    try:
        return [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise MosixError(f"--speeds takes comma-separated integers, not '{text}'") from None


def cluster_status(root: Path) -> list[dict]:
    """Each node: whether its mosd runs and what node 1's view (or its own) says of it."""
    layout = localcluster.ClusterLayout.load(root)
    rows = []
    for k, ip in enumerate(layout.addresses, start=1):
        pid = localcluster.running_pid(layout.etc(k))
        row = {"node": k, "ip": str(ip), "pid": pid, "running": pid is not None, "view": None}
        if pid:
            try:
                view = Client(layout.etc(k)).request(p.ViewRequest()).nodes
                row["view"] = {"alive": sum(1 for n in view if n["alive"]), "known": len(view)}
                row["self"] = next(n for n in view if n["local"])
            except (DaemonUnavailable, MosixError):
                pass
        rows.append(row)
    return rows


@app.command("up", help="Create the configuration and start N daemons.")
@reports_errors
def up_cmd(
    nodes: int = typer.Option(4, "--nodes", "-n", help="number of nodes"),
    speeds: str | None = typer.Option(None, "--speeds", help="comma-separated speeds (10000 = standard)"),
    base_ip: str = typer.Option("127.0.0.1", "--base-ip", help="address of node 1"),
    cpus: int = typer.Option(1, "--cpus", min=1, help="CPUs of each virtual node"),
    memory_mb: int = typer.Option(4096, "--memory", min=1, help="memory of each virtual node (MB)"),
    interval: float = typer.Option(1.0, "--interval", min=0.05, help="gossip period (seconds)"),
    port: int | None = typer.Option(None, "--port", help="UDP and TCP port (default MOSIX's 253 as root)"),
    root: Path | None = RootOption,
) -> None:
    layout = localcluster.up(
        root_of(root),
        nodes=nodes,
        speeds=parse_speeds(speeds),
        base_ip=base_ip,
        cpus=cpus,
        memory_mb=memory_mb,
        interval=interval,
        udp_port=port,
        tcp_port=port,
    )
    typer.echo(
        f"local cluster of {layout.nodes} nodes up: {layout.addresses[0]} … {layout.addresses[-1]} "
        f"(configuration in {layout.root})"
    )


@app.command("down", help="Stop every daemon of the local cluster.")
@reports_errors
def down_cmd(root: Path | None = RootOption) -> None:
    count = localcluster.down(root_of(root))
    typer.echo(f"stopped {count} node{'s' if count != 1 else ''}")


@app.command("stop", help="Stop the daemon of node K (it will be seen dead by the others).")
@reports_errors
def stop_cmd(k: int, root: Path | None = RootOption) -> None:
    pid = localcluster.stop_node(root_of(root), k)
    typer.echo(f"node {k} stopped" if pid else f"node {k} was not running")


@app.command("start", help="Start the daemon of node K again.")
@reports_errors
def start_cmd(k: int, root: Path | None = RootOption) -> None:
    pid = localcluster.start_node(root_of(root), k)
    typer.echo(f"node {k} started (pid {pid})")


@app.command("status", help="Which daemons run, and how much of the cluster each one sees.")
@reports_errors
def status_cmd(root: Path | None = RootOption, as_json: bool = typer.Option(False, "--json")) -> None:
    rows = cluster_status(root_of(root))
    if as_json:
        print_json(rows)
        return
    for row in rows:
        if not row["running"]:
            typer.echo(f"node {row['node']}  {row['ip']:<15} down")
            continue
        seen = f"sees {row['view']['alive']}/{row['view']['known']} nodes alive" if row["view"] else "not answering"
        load = f"load {row['self']['load'] / 100:.2f}" if row.get("self") else ""
        typer.echo(f"node {row['node']}  {row['ip']:<15} up (pid {row['pid']})  {seen}  {load}")


@app.command(
    "exec",
    help="Run a command 'on node K' (with that node's MOSIX_ETC).",
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
)
@reports_errors
def exec_cmd(ctx: typer.Context, k: int, root: Path | None = RootOption) -> None:
    command: list[str] = list(ctx.args)
    if command and command[0] == "--":
        command = command[1:]
    if not command:
        raise MosixError("usage: moscluster exec K -- COMMAND [ARGS]...")
    etc = localcluster.ClusterLayout.load(root_of(root)).etc(k)
    env = {**os.environ, "MOSIX_ETC": str(etc)}
    try:
        os.execvpe(command[0], command, env)
    except OSError as err:
        raise MosixError(f"{command[0]}: {err.strerror}") from None


def main() -> None:
    run(app)


if __name__ == "__main__":
    main()
