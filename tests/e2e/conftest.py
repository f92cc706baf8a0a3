"""Fixtures of the end-to-end tests (defined in harness.py)."""

from collections.abc import Iterator

import pytest

from tests.e2e.harness import VERIFIED_ORIGINS, database, deployment

__all__ = ["database", "deployment"]


@pytest.fixture(autouse=True)
def origins_untouched(request: pytest.FixtureRequest) -> Iterator[None]:
    """After each test on the session's deployment: every finished resume left its origin as it was."""
    yield
    if "deployment" in request.fixturenames:
        watch = request.getfixturevalue("deployment").origins
        if watch is not None:
            watch.check()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """How many resumes were checked against their origin's checksums, in the summary."""
    for verified in VERIFIED_ORIGINS:
        terminalreporter.write_line(
            f"origin watch: {verified} resume run(s) left their origin Metaflow run byte-identical"
        )
