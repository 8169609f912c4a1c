"""A running job's control: the first reason to stop it is the one it stops for, and the lease as
the worker knows it."""

from __future__ import annotations

import math
import time
from pathlib import Path

import pytest
from service_helpers import request
from test_store import submit

from engine.service.control import JobControl, StopKind
from engine.service.store import SQLiteStore
from spooky.errors import JobCancelled


@pytest.fixture
def control(tmp_path: Path) -> JobControl:
    store = SQLiteStore(tmp_path / "engine.sqlite3")
    submit(store, request())
    job = store.claim_next("w", 60)
    store.close()
    return JobControl(job=job, deadline=time.monotonic() + 60, lease_s=30, lease_until=math.inf)


def test_the_first_stop_reason_wins(control: JobControl):
    control.stop(StopKind.CANCEL, "7")
    at = control.stop_at
    control.stop(StopKind.TIMEOUT)
    control.stop(StopKind.DRAIN)
    control.stop(StopKind.LOST)
    assert (control.stop_kind, control.stop_by, control.stop_at) == (StopKind.CANCEL, "7", at)
    control.deadline = time.monotonic() - 1  # its time runs out as well: still the cancel
    with pytest.raises(JobCancelled, match="cancel"):
        control.check()
    assert control.stop_kind is StopKind.CANCEL and control.stopping.is_set()


def test_a_timeout_is_noticed_by_the_render_thread(control: JobControl):
    control.check()  # nothing asked, time left
    control.deadline = time.monotonic() - 1
    with pytest.raises(JobCancelled, match="timeout"):
        control.check()
    assert control.stop_kind is StopKind.TIMEOUT


def test_the_lease_is_fresh_only_as_long_as_the_last_confirmed_renewal(control: JobControl):
    control.lease_until = time.monotonic() - 0.1  # the claim's lease ran out unconfirmed
    assert not control.lease_fresh()
    control.renewed(time.monotonic())
    assert control.lease_fresh()
    earlier = control.lease_until
    control.renewed(time.monotonic() - 100)  # an old renewal answering late never shortens it
    assert control.lease_until == earlier
