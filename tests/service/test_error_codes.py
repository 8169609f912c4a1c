"""Every way a job can end without its result has a code of `JobErrorCode`, and only those."""

from __future__ import annotations

import spooky.errors as errors
from engine.pipeline.ffmpeg import VideoDiskFullError
from engine.service.errors import BadSpecError, DiskFullError
from engine.service.store.sql import _error_code
from spooky.contract import JobErrorCode


def _subclasses(cls: type) -> set[type]:
    out = set()
    for sub in cls.__subclasses__():
        out |= {sub, *_subclasses(sub)}
    return out


def test_every_error_a_job_can_end_with_has_a_member():
    # What the worker records as a job's failure: input, setup and video errors, and its own.
    job_errors = {errors.InputError, errors.WeightsError, errors.ConfigError, errors.VideoError}
    classes = set(job_errors)
    for cls in job_errors:
        classes |= _subclasses(cls)
    classes |= {BadSpecError, DiskFullError, VideoDiskFullError, errors.JobCancelled}
    missing = {c.__name__: c.code for c in classes if c.code not in JobErrorCode._value2member_map_}
    assert not missing, missing


def test_codes_of_exceptions_and_of_stored_rows():
    assert JobErrorCode.of(errors.PromptTooLongError("x")) is JobErrorCode.PROMPT_TOO_LONG
    assert JobErrorCode.of(RuntimeError("x")) is JobErrorCode.ERROR
    assert _error_code("oom") is JobErrorCode.OOM
    assert _error_code("written_by_a_newer_release") is JobErrorCode.ERROR
    assert _error_code(None) is None
