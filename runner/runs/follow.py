"""Following a submitted job: its log lines, its latest progress, and its final stage."""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterator

from runner import failures, ledger
from runner.backends.base import JobStatus
from runner.ledger import Progress, RunRecord
from runner.runs.step import Step


def _finished(step: Step, record: RunRecord, stage: str, wait: bool) -> JobStatus | None:
    """The job's final status; None while it runs (and we are not waiting)."""
    job_id = record.jobs[stage].id
    if wait:
        for line in _follow(step, job_id):
            step.echo(f"[{stage}] {line}")
            if stage == "train" and _progress(record, line):
                step.updated(record, progress=True)
    elif stage == "train":  # not following: the job's latest progress line, for status and the live comment
        for line in step.backend.logs(job_id):
            _progress(record, line)
    status = step.backend.status(job_id)
    while wait and not status.finished and not step.out_of_time():
        time.sleep(0.2)  # logs can end a moment before the status does
        status = step.backend.status(job_id)
    job = record.jobs[stage]
    if status.stage != job.stage:
        step.echo(f"[{stage}] job {job_id}: {job.stage} -> {status.stage}")
        job.stage = status.stage
    if status.running_seconds is not None:
        job.running_seconds = status.running_seconds
    if not status.finished:
        ledger.save(step.home, record, step.name)  # the last seen stage survives this process
        return None
    job.finished_at = ledger.now()
    submitted = time.mktime(time.strptime(job.submitted_at, "%Y-%m-%dT%H:%M:%SZ"))
    finished = time.mktime(time.strptime(job.finished_at, "%Y-%m-%dT%H:%M:%SZ"))
    record.seconds[stage] = max(finished - submitted, 0.0)
    record.cost_usd["actual"] = record.actual_usd()
    return status


def _progress(record: RunRecord, line: str) -> bool:
    """Keep the job's latest `progress step=S/T loss=L` line in the record; True if it was one."""
    m = failures.PROGRESS.match(line.strip())
    if not m:
        return False
    loss = float(m.group(3)) if m.group(3) else (record.progress.loss if record.progress else None)
    record.progress = Progress(step=int(m.group(1)), total=int(m.group(2)), loss=loss)
    return True


def _follow(step: Step, job_id: str) -> Iterator[str]:
    """The job's log lines, until it ends or the follow window closes (a quiet stream cannot hold it open)."""
    if step.follow_seconds is None:
        yield from step.backend.logs(job_id, follow=True)
        return
    lines: queue.Queue[str | None] = queue.Queue()

    def pump() -> None:
        try:
            for line in step.backend.logs(job_id, follow=True):
                lines.put(line)
        except Exception as e:  # noqa: BLE001 - the job's status, not its log, decides the run
            lines.put(f"(log stream ended: {str(e).splitlines()[0] if str(e) else type(e).__name__})")
        lines.put(None)

    threading.Thread(target=pump, daemon=True).start()
    while (left := step.time_left()) is not None and left > 0:
        try:
            line = lines.get(timeout=min(left, 5.0))
        except queue.Empty:
            continue
        if line is None:
            return
        yield line
