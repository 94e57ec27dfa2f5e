"""The queue panel, on every page: the latest jobs of both queues, the running job's preview, and a picker
to cancel any running or queued job (after a reload the forms no longer know their jobs)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from studio.jobs.queue import RUNNING, Job
from studio.page.watch import status_text

if TYPE_CHECKING:
    from studio.core import Studio

SHOWN = 12  # jobs in the table


def active(studio: Studio) -> list[Job]:
    """Running jobs first, then the queue in order."""
    return [job for job in reversed(studio.jobs.jobs()) if not job.finished]


def picker_choices(jobs: list[Job]) -> list[tuple[str, str]]:
    return [(f"{job.id} — {job.label[:40]}", job.id) for job in jobs]


def table(studio: Studio) -> tuple[str, Any]:
    """(Markdown table of the latest jobs, the running clip job's preview or None)."""
    jobs = studio.jobs.jobs()[:SHOWN]
    if not jobs:
        return "No jobs yet.", None
    # two columns, what first: readable at phone width (the picker below names jobs by id for cancelling)
    lines = ["| What | Status |", "|---|---|"]
    several = len(studio.jobs.workers) > 1
    for job in jobs:
        what = job.label[:50].replace("|", "/")
        where = f" · on {job.worker}" if several and job.worker else ""  # which GPU runs (or ran) it
        lines.append(f"| {what} | {status_text(job, studio.jobs.position(job.id))}{where} |")
    running = next((j for j in jobs if j.status == RUNNING and j.preview is not None), None)
    return "\n".join(lines), running.preview if running is not None else None
