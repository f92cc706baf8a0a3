"""``auto-resume ui`` (what ``bash scripts/ui.sh`` runs), watched in a real browser.

The command runs as a newcomer runs it: no PostgreSQL, no DAGSTER_HOME. Once its example run
has failed and the sensor's resume run has succeeded (read from the webserver's GraphQL API), the
runs page and the Automation page are loaded in headless Chromium (the set-up of
``test_browser.py``). Then Ctrl-C (SIGINT): the command stops ``dagster dev`` and removes its
throwaway home.
"""

import json
import os
import signal
import subprocess
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from auto_resume.dagster import tags
from auto_resume.dagster.sensor import SENSOR_NAME
from tests.e2e import test_browser
from tests.support import BIN
from tests.support.processes import free_port, start_tied_to_this_thread
from tests.support.waiting import wait_until

pytestmark = pytest.mark.e2e

browser = test_browser.browser  # the same headless Chromium, fresh profile per test
JOB = "ForeachFlow"
RUNS_TIMEOUT = 600.0  # about 2 min on 2 idle cores: dagster dev loads two locations, a run, its resume
PAGE_TIMEOUT = 60.0
STOP_TIMEOUT = 90.0

_RUNS = """
query($filter: RunsFilter) {
  runsOrError(filter: $filter) { ... on Runs { results { runId jobName status } } }
}
"""


def _runs(url: str, runs_filter: dict[str, Any]) -> list[dict[str, Any]]:
    body = json.dumps({"query": _RUNS, "variables": {"filter": runs_filter}}).encode()
    request = urllib.request.Request(
        f"{url}/graphql", data=body, headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            document = json.load(response)
    except OSError:  # not serving yet
        return []
    results: list[dict[str, Any]] = document["data"]["runsOrError"]["results"]
    return results


def _failed_and_resumed(url: str, ui: subprocess.Popen[bytes]) -> tuple[str, str] | None:
    """The failed example run and its succeeded resume run, once both exist."""
    if ui.poll() is not None:
        raise AssertionError(f"auto-resume ui exited with {ui.returncode}")
    failed = _runs(url, {"pipelineName": JOB, "statuses": ["FAILURE"]})
    if not failed:
        return None
    resumes = _runs(
        url, {"tags": [{"key": tags.PARENT_RUN_ID, "value": failed[0]["runId"]}], "statuses": ["SUCCESS"]}
    )
    if not resumes:
        return None
    assert resumes[0]["jobName"] == f"{JOB}_resume"
    return failed[0]["runId"], resumes[0]["runId"]


def test_ui_command_shows_a_failed_run_and_its_resume(browser: Any, tmp_path: Path) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    scratch = tmp_path / "tmp"  # the command's throwaway home goes here (TMPDIR)
    scratch.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("DAGSTER_HOME", "DAGSTER_PG_URL")}
    env.update(TMPDIR=str(scratch), METAFLOW_USER=env.get("METAFLOW_USER", "auto-resume"))
    log_file = tmp_path / "ui.log"
    with log_file.open("w") as log:
        ui = start_tied_to_this_thread(
            [str(BIN / "auto-resume"), "ui", "--port", str(port)], log=log, env=env, own_process_group=True
        )
    try:
        failed, resumed = wait_until(
            lambda: _failed_and_resumed(url, ui),
            RUNS_TIMEOUT,
            "no failed ForeachFlow run with a succeeded resume run",
            lambda: log_file.read_text()[-4000:],
            interval=2,
        )
        on_runs = (failed[:8], resumed[:8], f"{JOB}_resume")
        runs_page = _screenshot(browser, f"{url}/runs", lambda text: all(s in text for s in on_runs))
        # The sensor is listed, and its switch shows it running.
        automation_page = _screenshot(
            browser,
            f"{url}/automation",
            lambda text: SENSOR_NAME in text and test_browser._switch_is_on(browser),
        )
        print(f"screenshots: {runs_page} {automation_page}")
    finally:
        # Ctrl-C in the terminal: SIGINT to the command's process group.
        os.killpg(ui.pid, signal.SIGINT)
        status = ui.wait(timeout=STOP_TIMEOUT)
    output = log_file.read_text()
    assert status == 0, output
    assert list(scratch.glob("auto-resume-ui-*")) == [], f"the throwaway home is still there:\n{output}"


def _screenshot(driver: Any, page: str, shows: Callable[[str], bool]) -> Path:
    """Load ``page``, wait until ``shows`` holds of its text; a screenshot of it in /tmp."""
    driver.get(page)
    test_browser._wait_for(
        lambda: shows(test_browser._page_text(driver)),
        PAGE_TIMEOUT,
        f"{page} does not show what it should",
        driver,
    )
    name = page.rstrip("/").rsplit("/", 1)[-1]
    shot = Path(f"/tmp/ui-command-{name}.png")
    driver.save_screenshot(str(shot))
    assert shot.stat().st_size > 0
    return shot
