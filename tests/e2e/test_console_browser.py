"""The web console in a real browser (Debian's chromium, headless, through its chromedriver with Selenium) over
`dualsync ui`'s server on a workdir a real run filled: see the dead letter with its record, field and rule, fix
the row, replay it by its button and see it gone; resolve a conflict by its button.

Chromium comes from scripts/ensure-chromium.sh (run by `make test`); a machine without it fails here, it never
skips. CONSOLE_SCREENSHOT=docs/console.png saves the screenshot the README shows.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from sqlalchemy import text

from shared.app import SyncApp
from shared.config import parse_config
from shared.console_server import ConsoleServer
from shared.local_runtime import RunOptions, run_once
from tests.e2e.test_bidirectional_soak import config, sides

CHROMIUM, DRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")


@pytest.fixture
def browser():
    if not (CHROMIUM.exists() and DRIVER.exists()):
        pytest.fail("chromium or chromedriver is missing: run `bash scripts/ensure-chromium.sh` as root "
                    "(make test does)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--window-size=1280,1500", "--no-first-run", "--disable-extensions"):
        options.add_argument(argument)
    driver = webdriver.Chrome(options=options, service=Service(str(DRIVER)))
    driver.implicitly_wait(0)
    yield driver
    driver.quit()


@pytest.fixture
def workdir(tmp_path):
    """A pair with conflicts: manual after a real run: one dead letter (a name too long for the ERP) and one
    conflict (the same record's name changed on both sides)."""
    crm_url, erp_url, crm, erp = sides(tmp_path)
    with crm.engine.begin() as conn:
        conn.execute(text("INSERT INTO accounts (accountnumber, name, telephone1) VALUES (:k, :n, :p)"),
                     [{"k": "A1", "n": "Acme", "p": "1"}, {"k": "A2", "n": "Globex", "p": "2"},
                      {"k": "A3", "n": "Initech with a name far too long for the ERP", "p": "3"}])
    flows = config(crm_url, erp_url)
    for flow in flows["flows"].values():
        flow["conflicts"] = "manual"
    flows["flows"]["accounts-to-erp"]["fields"][1]["max_length"] = 20
    app = SyncApp.local(parse_config(flows), tmp_path / "state", retry_base=0.01)
    run_once(app, RunOptions(drain_bound=2))
    run_once(app, RunOptions(drain_bound=2))
    crm.edit("A1", "name", "Acme (CRM)")
    erp.edit("A1", "name", "Acme (ERP)")
    run_once(app, RunOptions(drain_bound=2))
    yield app, crm, erp
    app.close()
    crm.engine.dispose()
    erp.engine.dispose()


def wait_for(driver, predicate, what: str, timeout: float = 15.0):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout, poll_frequency=0.1).until(lambda d: predicate(d), message=what)


def rows(driver, css: str) -> list:
    from selenium.webdriver.common.by import By

    return driver.find_elements(By.CSS_SELECTOR, css)


def test_see_a_dead_letter_replay_it_and_resolve_a_conflict_in_the_browser(browser, workdir):
    from selenium.webdriver.common.by import By

    app, crm, erp = workdir
    server = ConsoleServer(app, port=0)
    server.start()
    try:
        browser.get(server.url)
        [letter] = wait_for(browser, lambda d: rows(d, "tr.dead-letter"), "the dead letter is listed")
        cells = [c.text for c in letter.find_elements(By.TAG_NAME, "td")]
        assert cells[0] == "accounts-to-erp" and cells[1] == "A3" and cells[2] == "name"
        assert "max_length 20" in cells[3]
        assert "ValidationFailed (1)" in browser.find_element(By.ID, "dead-letters").text
        [conflict] = rows(browser, "#conflicts .conflict")
        assert "Acme (CRM)" in conflict.text and "Acme (ERP)" in conflict.text
        assert rows(browser, "#run-chart rect.applied") and rows(browser, "#run-chart rect.failed")
        assert "accounts-to-erp" in browser.find_element(By.ID, "flows").text
        if os.environ.get("CONSOLE_SCREENSHOT"):
            browser.save_screenshot(os.environ["CONSOLE_SCREENSHOT"])

        crm.edit("A3", "name", "Initech")  # the fix at the source; replay re-reads it
        letter.find_element(By.CSS_SELECTOR, "button.replay").click()
        wait_for(browser, lambda d: not rows(d, "tr.dead-letter"), "the replayed dead letter is gone")
        assert "replayed 1 of 1" in browser.find_element(By.ID, "notice").text

        [conflict] = rows(browser, "#conflicts .conflict")  # the page was drawn again after the replay
        conflict.find_element(By.CSS_SELECTOR, 'button.take[data-system="crm"]').click()
        wait_for(browser, lambda d: not rows(d, "#conflicts .conflict"), "the resolved conflict is gone")
        assert "No open conflicts." in browser.find_element(By.ID, "conflicts").text
    finally:
        server.close()
    run_once(app, RunOptions(drain_bound=2))
    assert erp.rows()["A3"][0] == "Initech" and erp.rows()["A1"][0] == "Acme (CRM)"
    assert app.bus.counts(app.queue).dead_letter == 0
