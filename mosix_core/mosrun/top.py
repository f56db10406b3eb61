"""The outermost mosrun of an invocation: a supervisor for one program, or for a queue."""

from __future__ import annotations

import os
import signal
from pathlib import Path

from mosix_core.daemon import protocol as p
from mosix_core.daemon.client import Session
from mosix_core.linux import ptrace
from mosix_core.mosrun import launch, placement, rules, targets
from mosix_core.mosrun import options as mosopts
from mosix_core.mosrun.freezing import Freezer
from mosix_core.mosrun.move import MoveRequest
from mosix_core.mosrun.supervisor import Supervisor, flag_summary, initial_state, node_in_cluster


def run_program(
    opts: mosopts.MosrunOptions, program: str, args: list[str], env: dict, etc: Path, session: Session | None
) -> None:
    """Become ``program``, supervised. Never returns. ``session``: an open session with
    the local mosd (the supervisor inherits it), or None where mosd does not run."""
    state = initial_state(opts)
    command = " ".join(args)
    start_at = None
    if session is not None:
        try:
            start_at = placement.start_target(opts, etc)
        except targets.UnknownTarget as err:
            # the manual's failure, before the program runs anything; -F: it runs at home
            os.write(2, f"{rules.PREFIX}{err}\n".encode(errors="replace"))
            if not opts.force:
                raise SystemExit(1) from None

    def supervise(root: int, messages: int) -> None:
        supervisor = Supervisor(
            messages_fd=messages, session=session, in_cluster=node_in_cluster(etc), freezer=Freezer(etc), etc=etc
        )
        supervisor.install_wakeup()
        tracee = supervisor.adopt(root, state, command)
        if start_at is not None:
            tracee.start_at = MoveRequest(start_at, starting=True, force=opts.force)
        supervisor.serve_control()
        supervisor.run()

    launch.start_supervised(program, args, env, supervise)


def run_queue(opts: mosopts.MosrunOptions, spec: str, env: dict, etc: Path, session: Session | None) -> int:
    """``mosrun -S``: this process supervises every job; returns the exit status."""
    from mosix_core.mosrun.queue import CommandQueue, Progress

    commands, failed = mosopts.parse_queue_spec(spec)
    messages = os.dup(2)
    queue = CommandQueue(
        commands, failed, opts.queue_jobs, say=lambda text: os.write(messages, (text + "\n").encode(errors="replace"))
    )
    progress = Progress(messages)
    filter_program = rules.build_filter()
    stopping = False

    def interrupted(signum, frame) -> None:
        nonlocal stopping
        stopping = True  # the running jobs got the terminal's signal themselves

    signal.signal(signal.SIGINT, interrupted)
    signal.signal(signal.SIGTERM, interrupted)

    def job_ended(tracee, stop: ptrace.Stop) -> None:
        if queue.finished(tracee.pid, stop.kind == "exited" and stop.code == 0) is not None:
            progress.show(queue)
            if session is not None:
                session.tell(p.UpdateRequest(pid=os.getpid(), changes=p.RowChanges(queue=queue.progress)))
            refill()

    supervisor = Supervisor(
        messages_fd=messages,
        session=session,
        in_cluster=node_in_cluster(etc),
        on_exit=job_ended,
        freezer=Freezer(etc),
        etc=etc,
    )
    supervisor.install_wakeup()
    supervisor.serve_control()

    def refill() -> None:
        while not stopping and (job := queue.next_job()) is not None:
            pid = launch.spawn_traced("bash", ["bash", "-c", job.line], env, filter_program)
            job.pid = pid
            queue.started(job)
            supervisor.adopt(pid, initial_state(opts), job.command, job=job)  # for people: mosps

    def more() -> bool:
        refill()
        return bool(supervisor.tracees) or (queue.more and not stopping)

    supervisor.keep_running = more
    if session is not None:
        changes = p.RowChanges(
            command=f"mosrun -S{opts.queue_jobs} {spec}",
            queue=queue.progress,
            options=flag_summary(initial_state(opts)),
        )
        session.tell(p.RegisterRequest(pid=os.getpid(), changes=changes))
    refill()
    supervisor.run()
    progress.end()
    return queue.close()
