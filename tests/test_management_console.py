"""The web console in a real browser: headless Chromium (Debian's chromium and chromium-driver,
installed by ``make test``) driven by Selenium, against a broker fed by real clients."""

from __future__ import annotations

import shutil
import tempfile
import threading
import time
import uuid

import pika
import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as ec
from selenium.webdriver.support.ui import Select, WebDriverWait
from test_management_support import Api, start_broker

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"


def browser() -> webdriver.Chrome:
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if shutil.which(p) is None]
    assert not missing, f"{missing} missing: `make deb-deps` installs chromium chromium-driver"
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    profile = tempfile.mkdtemp(prefix="polymq-chromium-")
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--window-size=1280,900",
        f"--user-data-dir={profile}",
    ):
        opts.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    driver.polymq_profile = profile
    return driver


@pytest.fixture(scope="module")
def mbroker(tmp_path_factory):
    broker, url = start_broker(tmp_path_factory.mktemp("mgmt-ui"), adapters=["amqp", "mqtt"])
    yield broker, url
    try:
        broker.stop()
    finally:
        broker.kill9()


@pytest.fixture
def page(mbroker):
    _, url = mbroker
    driver = browser()
    try:
        driver.get(url + "/")
        wait = WebDriverWait(driver, 15)
        form = wait.until(ec.visibility_of_element_located((By.ID, "login")))
        form.find_element(By.NAME, "user").clear()
        form.find_element(By.NAME, "user").send_keys("guest")
        form.find_element(By.NAME, "password").send_keys("guest")
        form.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
        wait.until(ec.invisibility_of_element_located((By.ID, "login")))
        Select(driver.find_element(By.ID, "interval")).select_by_value("1000")
        yield driver, wait
        severe = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
        assert not severe, f"browser console errors: {severe}"
    finally:
        driver.quit()
        shutil.rmtree(driver.polymq_profile, ignore_errors=True)


def test_login_refused_with_a_wrong_password(mbroker):
    _, url = mbroker
    driver = browser()
    try:
        driver.get(url + "/")
        wait = WebDriverWait(driver, 15)
        form = wait.until(ec.visibility_of_element_located((By.ID, "login")))
        form.find_element(By.NAME, "password").send_keys("wrong")
        form.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
        wait.until(ec.text_to_be_present_in_element((By.ID, "login-error"), "Login failed"))
        assert driver.find_element(By.ID, "login").is_displayed()
    finally:
        driver.quit()
        shutil.rmtree(driver.polymq_profile, ignore_errors=True)


def test_overview_loads_with_protocols_side_by_side(page):
    driver, wait = page
    wait.until(lambda d: d.find_element(By.CSS_SELECTOR, "[data-testid=total-version]").text)
    assert driver.find_element(By.CSS_SELECTOR, "[data-testid=total-alarm]").text == "off"
    headers = [th.text for th in driver.find_elements(By.CSS_SELECTOR, "#protocols thead th")]
    assert headers[1:] == ["amqp", "mqtt"]
    assert driver.find_element(
        By.CSS_SELECTOR, "[data-testid=proto-amqp-connections]"
    ).text.isdigit()
    wait.until(lambda d: d.find_element(By.ID, "updated").text != "never")


def test_purge_a_queue_from_the_ui(page, mbroker):
    broker, url = mbroker
    driver, wait = page
    q = "ui-" + uuid.uuid4().hex[:6]
    conn = pika.BlockingConnection(pika.ConnectionParameters(broker.host, broker.port("amqp")))
    ch = conn.channel()
    ch.queue_declare(q)
    for i in range(5):
        ch.basic_publish("", q, b"m%d" % i)
    conn.process_data_events(0.2)
    driver.find_element(By.CSS_SELECTOR, "nav button[data-view=queues]").click()
    ready = (By.CSS_SELECTOR, f"[data-testid='queue-ready-/-{q}']")
    wait.until(ec.text_to_be_present_in_element(ready, "5"))
    row = driver.find_element(By.CSS_SELECTOR, f"[data-testid='queue-row-/-{q}']")
    row.find_element(By.XPATH, ".//button[text()='Purge']").click()
    wait.until(ec.text_to_be_present_in_element((By.ID, "status"), f"purge {q}: done"))
    wait.until(ec.text_to_be_present_in_element(ready, "0"))
    assert Api(url).get(f"/api/queues/%2F/{q}")["messages_ready"] == 0
    assert ch.basic_get(q) == (None, None, None)
    conn.close()


def test_live_chart_moves_while_a_client_publishes(page, mbroker):
    broker, _ = mbroker
    driver, wait = page
    chart = driver.find_element(By.ID, "chart")
    q = "chart-" + uuid.uuid4().hex[:6]
    stop = threading.Event()
    sent = []

    def publish():
        conn = pika.BlockingConnection(pika.ConnectionParameters(broker.host, broker.port("amqp")))
        ch = conn.channel()
        ch.queue_declare(q)
        deadline = time.monotonic() + 30  # bounded, whatever happens to the test
        while not stop.is_set() and time.monotonic() < deadline:
            for _ in range(20):
                ch.basic_publish("", q, b"tick")
                sent.append(1)
            conn.process_data_events(0.02)
        conn.close()

    wait.until(lambda d: int(chart.get_attribute("data-points") or 0) >= 1)
    t = threading.Thread(target=publish, daemon=True)
    t.start()
    try:
        first = wait.until(
            lambda d: (
                float(chart.get_attribute("data-last-publish-rate") or 0) > 0
                and chart.get_attribute("data-last-time")
            )
        )
        # the chart keeps moving: a later point, still with messages flowing
        wait.until(lambda d: chart.get_attribute("data-last-time") != first)
        assert float(chart.get_attribute("data-last-publish-rate")) > 0
        assert float(chart.get_attribute("data-max-rate")) > 0
    finally:
        stop.set()
        t.join(10)
    assert sent
