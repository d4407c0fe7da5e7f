"""Suite-wide rules.

In CI (``CI`` set) a skipped integration test is turned into a failure: the integration suite
must really run against a broker there, never quietly pass by skipping. Only a run against an
external stack (``APP_URL`` set, see scripts/compose-test) may skip the tests that need to stop
or kill the service process.
"""

from __future__ import annotations

import os

import pytest


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # type: ignore[no-untyped-def]
    report = yield
    in_ci = os.environ.get("CI", "").lower() not in ("", "0", "false")
    against_own_stack = not os.environ.get("APP_URL")  # an external stack may skip, see below
    if (
        in_ci
        and against_own_stack
        and report.skipped
        and not hasattr(report, "wasxfail")
        and item.get_closest_marker("integration") is not None
    ):
        report.outcome = "failed"
        report.longrepr = f"integration test skipped in CI: {report.longrepr}"
    return report
