"""The running job's lease: renewed by a task beside the render, and lapsed leases reaped.

A worker's claim is a lease (`[engine] lease_s`). While the job renders, `keep_lease` extends it
every lease_s / 3 (not per step: a slow step must not cost the lease, a fast one must not cost a
write). A renewal that finds the attempt no longer holds the job (its lease lapsed while this
process was stopped or cut off, and the job went back to the queue) stops the job with `lost`:
the worker then writes nothing more for it, and every write it might still attempt is fenced by
the store with (job id, attempt). A renewal also carries a cancel asked of the job on another node.

`reap_lapsed` runs on every node of a shared database: it gives the jobs of dead workers back to
the queue (or fails them after `MAX_ATTEMPTS`), and only those: a live worker keeps renewing.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from engine.service.control import JobControl, StopKind
from engine.service.store import MAX_ATTEMPTS, DatabaseUnavailableError, DiskFullError, Lease

if TYPE_CHECKING:
    from engine.service.core import EngineCore

log = logging.getLogger(__name__)

#: Renewals per lease: two may fail (a database restart) before the lease lapses.
RENEWALS_PER_LEASE = 3
#: While renewals fail, one is tried this often: the lease is confirmed as soon as the database
#: answers again (the render writes no files until it is).
RETRY_S = 1.0


async def keep_lease(control: JobControl, renew: Callable[[], Awaitable[Lease]], wake: asyncio.Event) -> None:
    """Renew `control.job`'s lease with `renew` until cancelled, at once when `wake` is set (a
    cancel was asked somewhere); stop the job when the lease is lost or a cancel is asked of it."""
    job = control.job
    every = control.lease_s / RENEWALS_PER_LEASE
    wait = every
    while True:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(wake.wait(), wait)
        wake.clear()
        sent = time.monotonic()
        try:
            lease = await renew()
        except (DatabaseUnavailableError, DiskFullError) as e:
            # Keep rendering: if the database is back before the lease lapses nothing is lost;
            # if not, the fenced writes refuse this attempt's results. The store reported it.
            log.debug("job %s: renewing its lease failed (%s); retrying in %g s", job.id, e, RETRY_S)
            wait = min(every, RETRY_S)
            continue
        wait = every
        if not lease.held:
            log.warning(
                "job %s: attempt %d lost its lease (this worker was stopped or cut off for over %g s); "
                "stopping it without writing more",
                job.id,
                job.attempts,
                control.lease_s,
            )
            control.stop(StopKind.LOST)
            return
        control.renewed(sent)
        if lease.cancel_by:
            control.stop(StopKind.CANCEL, lease.cancel_by)


async def reap_lapsed(core: EngineCore, wake: Callable[[], None] | None) -> int:
    """Requeue (or fail, after the last attempt) the running jobs whose lease lapsed; how many."""
    events = await core.db(functools.partial(core.store.recover_interrupted, MAX_ATTEMPTS, lapsed_only=True))
    for event in events:
        log.warning("job %s: %s", event.job_id, event.data.get("reason"))
    if events and wake is not None:
        wake()
    return len(events)


async def reap_loop(core: EngineCore, lease_s: float, wake: Callable[[], None] | None) -> None:
    """`reap_lapsed` every lease_s / 2, for as long as the node runs."""
    while True:
        try:
            await reap_lapsed(core, wake)
        except DatabaseUnavailableError as e:
            log.debug("reaping lapsed leases failed: %s", e)  # the store reported the outage
        except Exception:
            log.exception("reaping lapsed leases failed")
        await asyncio.sleep(lease_s / 2)
