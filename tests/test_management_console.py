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
from conftest import stopping
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as ec
from selenium.webdriver.support.ui import Select, WebDriverWait
from test_management_support import Api, echo_client, install_echo_plugin, start_broker

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
    # echo: a test adapter on the connection contract (tests/test_management_support.py)
    env = install_echo_plugin(tmp_path_factory.mktemp("echo-plugin"))
    broker, url = start_broker(
        tmp_path_factory.mktemp("mgmt-ui"), adapters=["amqp", "mqtt", "echo"], env=env
    )
    with stopping(broker):
        yield broker, url


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
    assert headers[1:] == ["amqp", "echo", "mqtt"]
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


def test_delete_a_queue_from_the_ui(page, mbroker):
    broker, url = mbroker
    driver, wait = page
    q = "del-" + uuid.uuid4().hex[:6]
    Api(url).ok("PUT", f"/api/queues/%2F/{q}", {"durable": False})
    driver.find_element(By.CSS_SELECTOR, "nav button[data-view=queues]").click()
    row = wait.until(
        ec.presence_of_element_located((By.CSS_SELECTOR, f"[data-testid='queue-row-/-{q}']"))
    )
    row.find_element(By.XPATH, ".//button[text()='Delete']").click()
    wait.until(ec.alert_is_present()).accept()
    wait.until(ec.text_to_be_present_in_element((By.ID, "status"), f"delete {q}: done"))
    assert Api(url).call("GET", f"/api/queues/%2F/{q}")[0] == 404
    conn = pika.BlockingConnection(pika.ConnectionParameters(broker.host, broker.port("amqp")))
    with pytest.raises(pika.exceptions.ChannelClosedByBroker):
        conn.channel().queue_declare(q, passive=True)
    conn.close()


def test_close_a_connection_from_the_ui(page, mbroker):
    broker, url = mbroker
    driver, wait = page
    sock = echo_client(broker, "ui-client", 2)
    try:
        conn_id = next(
            c["id"] for c in Api(url).get("/api/connections") if c["client_id"] == "ui-client"
        )
        driver.find_element(By.CSS_SELECTOR, "nav button[data-view=connections]").click()
        row = wait.until(
            ec.presence_of_element_located(
                (By.CSS_SELECTOR, f"[data-testid='connection-row-{conn_id}']")
            )
        )
        assert "ui-client" in row.text and "echo" in row.text
        row.find_element(By.XPATH, ".//button[text()='Close']").click()
        wait.until(ec.text_to_be_present_in_element((By.ID, "status"), ": done"))
        sock.settimeout(5)
        while sock.recv(4096):  # the broker closed it
            pass
        wait.until(
            ec.invisibility_of_element_located(
                (By.CSS_SELECTOR, f"[data-testid='connection-row-{conn_id}']")
            )
        )
    finally:
        sock.close()


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


def take_screenshots(out_dir: str) -> None:
    """The PNGs of docs/management.md: a broker fed by pika, paho and kafka-python, and the
    console's pages in headless Chromium (``python tests/test_management_console.py docs``)."""
    from pathlib import Path

    import paho.mqtt.client as mqtt
    from kafka import KafkaConsumer, KafkaProducer

    out = Path(out_dir)
    with tempfile.TemporaryDirectory() as tmp:
        broker, url = start_broker(Path(tmp), adapters=["amqp", "mqtt", "kafka"])
        driver = browser()
        try:
            boot = f"{broker.host}:{broker.port('kafka')}"
            p = KafkaProducer(bootstrap_servers=boot)
            for i in range(300):
                p.send("sensors.temp", b"%d" % i, partition=None)
            p.flush(15)
            c = KafkaConsumer(
                "sensors.temp",
                bootstrap_servers=boot,
                group_id="dashboards",
                auto_offset_reset="earliest",
                enable_auto_commit=False,
                consumer_timeout_ms=15000,
            )
            for n, _ in enumerate(c, 1):
                if n == 220:
                    break
            c.commit()
            c.close()
            m = mqtt.Client(
                mqtt.CallbackAPIVersion.VERSION2, client_id="thermostat-7", clean_session=False
            )
            m.connect(broker.host, broker.port("mqtt"))
            m.loop_start()
            m.subscribe("sensors/#", 1)
            m.publish("sensors/temp/config", b'{"unit": "C"}', qos=1, retain=True)
            conn = pika.BlockingConnection(
                pika.ConnectionParameters(broker.host, broker.port("amqp"))
            )
            ch = conn.channel()
            for q, n in (("orders", 120), ("invoices", 35), ("audit", 0)):
                ch.queue_declare(q, durable=True)
                for i in range(n):
                    ch.basic_publish("", q, b"order %d" % i)
            ch.queue_bind("audit", "amq.topic", "sensors.#")
            driver.get(url + "/")
            wait = WebDriverWait(driver, 15)
            form = wait.until(ec.visibility_of_element_located((By.ID, "login")))
            form.find_element(By.NAME, "password").send_keys("guest")
            form.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
            Select(driver.find_element(By.ID, "interval")).select_by_value("1000")
            deadline = time.monotonic() + 25
            i = 0
            while time.monotonic() < deadline:  # a varying load for the chart
                for _ in range(50 + 40 * (i % 5)):
                    ch.basic_publish("", "orders", b"x")
                p.send("sensors.temp", b"t")
                conn.process_data_events(0.1)
                i += 1
            ch.queue_purge("orders")
            for k in range(120):
                ch.basic_publish("", "orders", b"order %d" % k)
            conn.process_data_events(1.5)
            driver.save_screenshot(str(out / "management-overview.png"))
            for view in ("queues", "topics", "groups", "mqtt"):
                driver.find_element(By.CSS_SELECTOR, f"nav button[data-view={view}]").click()
                time.sleep(1.5)
                driver.save_screenshot(str(out / f"management-{view}.png"))
            m.disconnect()
            m.loop_stop()
            conn.close()
            p.close()
        finally:
            driver.quit()
            shutil.rmtree(driver.polymq_profile, ignore_errors=True)
            broker.stop()
            broker.kill9()


if __name__ == "__main__":
    import sys

    take_screenshots(sys.argv[1] if len(sys.argv) > 1 else "docs")
