"""The Dagster UI in a real browser: turn auto_resume_sensor off and on with its toggle.

Headless Chromium (Debian's ``chromium``, driven through Debian's ``chromedriver`` by selenium;
``bash scripts/setup_browser.sh`` installs them) against ``dagster-webserver -w workspace.yaml``
on loopback, on the same instance as the session's daemon. After each click the test reads the
sensor state that the click stored in the instance.
"""

import contextlib
import subprocess
import tempfile
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from dagster._core.scheduler.instigation import InstigatorStatus, InstigatorType

from auto_resume.dagster.sensor import SENSOR_NAME
from tests.e2e.harness import ROOT, Deployment
from tests.support.processes import free_port, start_tied_to_this_thread
from tests.support.waiting import wait_until

pytestmark = pytest.mark.e2e

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
SENSOR_PATH = f"/locations/auto_resume/sensors/{SENSOR_NAME}"
# Dagster's Checkbox component with format="switch" renders <label class="...formatSwitch...">.
SWITCH = "label[class*='formatSwitch']"
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",  # the tests run as root
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1400,1000",
)
PAGE_TIMEOUT = 180.0  # the webserver loads four code locations, each importing Metaflow
STATE_TIMEOUT = 60.0


@pytest.fixture(scope="module")
def webserver(deployment: Deployment, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """dagster-webserver serving this repo's workspace on the session's instance; its base URL."""
    port = free_port()
    log_file = tmp_path_factory.mktemp("webserver") / "webserver.log"
    with log_file.open("w") as log:
        server = start_tied_to_this_thread(
            [
                str(ROOT / ".venv" / "bin" / "dagster-webserver"),
                *("-w", "workspace.yaml", "-h", "127.0.0.1", "-p", str(port)),
            ],
            log=log,
            env=deployment.env,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_until_serving(url, server, log_file)
        yield url
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def _wait_until_serving(url: str, server: subprocess.Popen[bytes], log_file: Path) -> None:
    def serving() -> bool:
        if server.poll() is not None:
            pytest.fail(f"dagster-webserver exited with {server.returncode}:\n{log_file.read_text()[-4000:]}")
        try:
            with urllib.request.urlopen(f"{url}/server_info", timeout=5) as response:
                return bool(response.status == 200)
        except OSError:
            return False

    def log_tail() -> str:
        return log_file.read_text()[-4000:]

    wait_until(serving, PAGE_TIMEOUT, f"dagster-webserver not serving {url}", log_tail, interval=1)


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Any]:
    """Headless Chromium from Debian's package, with a fresh profile."""
    missing = [str(path) for path in (CHROMIUM, CHROMEDRIVER) if not path.exists()]
    if missing:
        pytest.fail(f"{', '.join(missing)} not found: run `bash scripts/setup_browser.sh` (as root)")
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError as exc:
        pytest.fail(f"selenium is not installed in .venv ({exc}): run `bash scripts/setup_browser.sh`")
    options = webdriver.ChromeOptions()
    # With both paths given, selenium never runs Selenium Manager, which would download a browser.
    options.binary_location = str(CHROMIUM)
    profile = tempfile.mkdtemp(prefix="chromium-profile-", dir=tmp_path)
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={profile}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(str(CHROMEDRIVER)))
    try:
        yield driver
    finally:
        driver.quit()


def _stored_status(deployment: Deployment) -> InstigatorStatus | None:
    instance = deployment.instance()
    for state in instance.all_instigator_state(instigator_type=InstigatorType.SENSOR):
        if state.name == SENSOR_NAME and state.repository_selector.location_name == "auto_resume":
            return state.status
    return None


def _page_text(driver: Any) -> str:
    from selenium.webdriver.common.by import By

    try:
        return str(driver.find_element(By.TAG_NAME, "body").text)[-3000:]
    except Exception as exc:  # the page may be gone; the failure message must still be written
        return f"(page text unavailable: {exc})"


def _wait_for(condition: Callable[[], Any], timeout: float, what: str, driver: Any) -> Any:
    """``wait_until`` that says what the page showed if ``condition`` never held."""
    return wait_until(condition, timeout, what, lambda: f"the page said:\n{_page_text(driver)}")


def _dismiss_welcome_dialog(driver: Any) -> None:
    """A fresh browser profile gets Dagster's "Join the Dagster community" dialog over the page."""
    from selenium.webdriver.common.by import By

    def skipped() -> bool:
        for button in driver.find_elements(By.TAG_NAME, "button"):
            if button.text.strip() == "Skip" and button.is_displayed():
                button.click()
                return True
        return False

    with contextlib.suppress(AssertionError):  # no dialog within 10 s: nothing to dismiss
        wait_until(skipped, 10, "no welcome dialog")


def _switch(driver: Any) -> Any:
    from selenium.webdriver.common.by import By

    switches = driver.find_elements(By.CSS_SELECTOR, SWITCH)
    return switches[0] if switches else None


def _switch_state(driver: Any) -> bool | None:
    """Whether the sensor's switch shows it running; None while there is none, or while the page
    re-renders it (React may replace the element between finding it and reading it)."""
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By

    try:
        switch = _switch(driver)
        return None if switch is None else bool(switch.find_element(By.CSS_SELECTOR, "input").is_selected())
    except StaleElementReferenceException:
        return None


def _switch_is_on(driver: Any) -> bool:
    return _switch_state(driver) is True


def test_sensor_toggle_in_the_ui_stops_and_starts_the_sensor(
    deployment: Deployment, webserver: str, browser: Any, tmp_path: Path
) -> None:
    screenshot = tmp_path / "sensor_page.png"
    browser.get(webserver + SENSOR_PATH)
    _wait_for(lambda: _switch(browser), PAGE_TIMEOUT, f"no sensor toggle on {SENSOR_PATH}", browser)
    _dismiss_welcome_dialog(browser)
    assert _stored_status(deployment) != InstigatorStatus.STOPPED, "the session's sensor should be running"
    _wait_for(lambda: _switch_is_on(browser), STATE_TIMEOUT, "the toggle did not show running", browser)
    try:
        _switch(browser).click()
        _wait_for(
            lambda: _stored_status(deployment) == InstigatorStatus.STOPPED,
            STATE_TIMEOUT,
            f"after the first click the stored state is still {_stored_status(deployment)}",
            browser,
        )
        off = "the toggle did not show off"
        _wait_for(lambda: _switch_state(browser) is False, STATE_TIMEOUT, off, browser)
    finally:
        # Whatever happened, leave the sensor running: the other end-to-end tests need it.
        if _switch_state(browser) is False:
            _switch(browser).click()
    _wait_for(
        lambda: _stored_status(deployment) == InstigatorStatus.RUNNING,
        STATE_TIMEOUT,
        f"after the second click the stored state is {_stored_status(deployment)}, not RUNNING",
        browser,
    )
    _wait_for(lambda: _switch_is_on(browser), STATE_TIMEOUT, "the toggle did not show running again", browser)
    browser.save_screenshot(str(screenshot))
    print(f"screenshot of the sensor page: {screenshot}")
    assert screenshot.stat().st_size > 0
    assert SENSOR_NAME in browser.title, browser.title
