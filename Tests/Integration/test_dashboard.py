"""(Operations) The live web dashboard on the admin listener: the page at /, its feed of server-sent
events at /api/v1/dashboard/feed, in a real browser.

The browser tests drive Debian's headless chromium through chromedriver and selenium: the page's
connection count and message rate follow the gateway's own figures while a publisher runs, the
clients view finds a client and disconnects it (the client sees DISCONNECT 0x98), the topics view
lists the publisher's topic and watches it, and a token-protected gateway makes the page ask for the
token. A screenshot is saved in the test's tmp dir. They skip only when chromium, chromedriver or
selenium is absent (`make deps` installs them). The feed's HTTP contract (401, 503 past the session
cap, 404 when disabled, the event format) is checked without a browser.

Loopback only; every wait is for a condition with a bound; the publisher thread, the MQTT clients,
the browser and the gateway are stopped by the test or its fixtures.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import threading
import time
from pathlib import Path

import pytest

from helpers import iotgw_only, publish_packet, raw5_connected, raw_connected, unique, wait_until
from operations_helpers import get, http_request

FEED = "/api/v1/dashboard/feed"
TOKEN = "dashboard-t0ken"
RATE = 40  # messages per second the publisher sends


@pytest.fixture(autouse=True)
def _iotgw_only():
    iotgw_only("the dashboard is iotgw's")


# --------------------------------------------------------------------------------------
# The browser


def _chromium() -> tuple[str, str] | None:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver") or ("/usr/bin/chromedriver" if os.path.exists("/usr/bin/chromedriver") else None)
    return (browser, driver) if browser and driver else None


@pytest.fixture
def browser(tmp_path):
    """Headless chromium through chromedriver; quit at teardown. Skips when either is absent."""
    found = _chromium()
    if found is None:
        pytest.skip("chromium and chromium-driver are not installed (apt-get install chromium chromium-driver)")
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        pytest.skip("selenium is not installed (pip install selenium)")
    # Never let selenium-manager look for a driver on the network: the paths are given.
    os.environ["SE_OFFLINE"] = "true"
    options = webdriver.ChromeOptions()
    options.binary_location = found[0]
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--window-size=1400,1100", "--no-first-run", "--disable-background-networking",
                     "--disable-component-update", "--disable-sync", "--disable-default-apps",
                     "--disable-extensions", "--no-proxy-server", f"--user-data-dir={tmp_path / 'chromium'}"):
        options.add_argument(argument)
    driver = webdriver.Chrome(options=options,
                              service=Service(executable_path=found[1], log_output=str(tmp_path / "chromedriver.log")))
    driver.set_page_load_timeout(20)
    driver.set_script_timeout(10)
    try:
        yield driver
    finally:
        driver.quit()


def text_of(driver, element_id: str) -> str:
    from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
    try:
        return driver.find_element("id", element_id).text
    except (NoSuchElementException, StaleElementReferenceException):
        return ""


def number(text: str) -> float | None:
    try:
        return float(text.replace(",", ""))
    except ValueError:
        return None


def visible(driver, element_id: str) -> bool:
    return driver.find_element("id", element_id).is_displayed()


# --------------------------------------------------------------------------------------
# Traffic


class Publisher:
    """Publishes QoS 0 messages on one topic at about RATE a second from a thread until stopped."""

    def __init__(self, port: int, topic: str, rate: int = RATE):
        self.client = raw_connected(port, client_id=unique("dash-pub"))
        self.topic = topic
        self.rate = rate
        self.sent = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> "Publisher":
        self._thread.start()
        return self

    def _run(self) -> None:
        interval = 1.0 / self.rate
        next_at = time.monotonic()
        while not self._stop.is_set():
            try:
                self.client.send(publish_packet(self.topic, f"reading {self.sent}".encode()))
            except OSError:
                return
            self.sent += 1
            next_at += interval
            self._stop.wait(max(0.0, next_at - time.monotonic()))

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(5)
        self.client.close()


def gateway_connections(port: int, token: str | None = None) -> int:
    return get(port, "/api/v1/stats", token).json()["connections"]["total"]


class Feed:
    """A raw HTTP/1.1 request for the feed and everything its response has brought so far."""

    def __init__(self, port: int, token: str | None = None, query: str = ""):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        auth = f"Authorization: Bearer {token}\r\n" if token else ""
        self.sock.sendall(f"GET {FEED}{query} HTTP/1.1\r\nHost: 127.0.0.1\r\n{auth}\r\n".encode())
        self.data = b""

    def close(self) -> None:
        self.sock.close()

    @property
    def head(self) -> bytes:
        return self.data.split(b"\r\n\r\n", 1)[0]

    def events(self) -> list[tuple[str, dict]]:
        """The complete events so far: [(name, JSON data)] (the chunked body decoded)."""
        body = self.data.split(b"\r\n\r\n", 1)[1] if b"\r\n\r\n" in self.data else b""
        text = b""
        while (end := body.find(b"\r\n")) > 0:
            size = int(body[:end], 16)
            if size == 0 or len(body) < end + 2 + size + 2:
                break
            text += body[end + 2:end + 2 + size]
            body = body[end + 2 + size + 2:]
        events = []
        for block in text.decode().split("\n\n")[:-1]:
            name = payload = None
            for line in block.split("\n"):
                if line.startswith("event: "):
                    name = line[7:]
                elif line.startswith("data: "):
                    payload = line[6:]
            if name and payload:
                events.append((name, json.loads(payload)))
        return events

    def wait_for(self, name: str, timeout: float = 10.0) -> dict:
        """Reads until an event called ``name`` is complete; returns the first one's data."""
        deadline = time.monotonic() + timeout
        while True:
            found = [d for n, d in self.events() if n == name]
            if found:
                return found[0]
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no {name} event within {timeout}s; got {self.data[:300]!r}")
            self.sock.settimeout(remaining)
            try:
                chunk = self.sock.recv(65536)
            except socket.timeout:
                continue
            if not chunk:
                raise AssertionError(f"closed before a {name} event; got {self.data[:300]!r}")
            self.data += chunk


# --------------------------------------------------------------------------------------
# Browser tests


def test_dashboard_follows_the_gateway(make_broker, browser, tmp_path):
    b = make_broker(admin={"enabled": True})
    topic = f"dash/{unique('sensor')}/temp"
    idle = [raw_connected(b.port, client_id=unique("idle")) for _ in range(2)]
    victim_id = unique("dash-victim")
    victim = raw5_connected(b.port, client_id=victim_id)
    try:
        with Publisher(b.port, topic) as publisher:
            browser.get(f"http://127.0.0.1:{b.admin_port}/")
            wait_until(lambda: text_of(browser, "feed-state") == "live", 10, 0.1, "the feed to go live")

            # The connection count is the gateway's, and follows it when a client connects.
            wait_until(lambda: number(text_of(browser, "conn-total")) == gateway_connections(b.admin_port), 10, 0.1,
                       "the page's connection count to match /api/v1/stats")
            before = gateway_connections(b.admin_port)
            extra = raw_connected(b.port, client_id=unique("late"))
            try:
                wait_until(lambda: number(text_of(browser, "conn-total")) == before + 1, 10, 0.1,
                           f"the page to show {before + 1} connections")
                assert number(text_of(browser, "conn-tcp")) == before + 1
                assert number(text_of(browser, "proto-5")) == 1  # the victim; the others are 3.1.1
            finally:
                extra.close()

            # The message rate: the publisher's rate, as the gateway counts it.
            # (A condition, not one reading: a loaded machine may bunch one second's messages into the next.)
            wait_until(lambda: RATE * 0.6 <= (number(text_of(browser, "rate-in")) or 0) <= RATE * 1.5, 15, 0.1,
                       f"an inbound rate near {RATE}/s on the page")
            assert publisher.sent > 0
            # The chart has been drawn on (some pixel of the message chart is not transparent).
            drawn = browser.execute_script(
                "const c = document.getElementById('chart-messages');"
                "const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;"
                "for (let i = 3; i < d.length; i += 4) if (d[i] !== 0) return true; return false;")
            assert drawn
            screenshot = tmp_path / "dashboard.png"
            assert browser.save_screenshot(str(screenshot)) and screenshot.stat().st_size > 10_000

            # Topics: the publisher's topic leads the busiest topics; the watch box shows its messages.
            browser.find_element("id", "tab-topics").click()
            wait_until(lambda: browser.find_elements("css selector", f'#topics td[data-topic="{topic}"]'), 10, 0.1,
                       "the publisher's topic among the busiest topics")
            browser.find_element("id", "watch-filter").send_keys(topic.rsplit("/", 1)[0] + "/+")
            browser.find_element("id", "watch-start").click()
            wait_until(lambda: "reading " in text_of(browser, "watch-log"), 10, 0.1, "watched messages")
            assert topic in text_of(browser, "watch-log")
            browser.save_screenshot(str(tmp_path / "dashboard-topics.png"))

            # Clients: search by id, disconnect; the client reads DISCONNECT 0x98 (administrative action).
            browser.find_element("id", "tab-clients").click()
            browser.find_element("id", "client-prefix").send_keys(victim_id)
            browser.find_element("id", "client-refresh").click()
            selector = f'#clients button[data-client-id="{victim_id}"]'
            wait_until(lambda: browser.find_elements("css selector", selector), 10, 0.1, "the victim in the clients view")
            # The list is re-rendered when a search answer arrives (typing and the button each start one), so
            # an element found a moment ago may be gone: read and click the current one, retrying if it went stale.
            def current(read):
                from selenium.common.exceptions import StaleElementReferenceException
                try:
                    return read()
                except StaleElementReferenceException:
                    return None
            row = wait_until(lambda: current(
                lambda: browser.find_element("css selector", f'#clients tr[data-client-id="{victim_id}"]').text), 5, 0.1,
                "the victim's row")
            assert "tcp" in row and "5.0" in row and "127.0.0.1" in row, row
            browser.save_screenshot(str(tmp_path / "dashboard-clients.png"))
            wait_until(lambda: current(lambda: browser.find_element("css selector", selector).click() or True), 5, 0.1,
                       "a click on the victim's Disconnect button")
            reason, _ = victim.expect_disconnect(timeout=10, what="after the dashboard's Disconnect button")
            assert reason == 0x98
            wait_until(lambda: "Disconnected" in text_of(browser, "client-notice"), 5, 0.1, "the page to confirm")
            wait_until(lambda: not any(c["client_id"] == victim_id and c["connected"]
                                       for c in get(b.admin_port, f"/api/v1/clients?prefix={victim_id}").json()["clients"]),
                       5, 0.1, "the gateway to list the victim as gone")
    finally:
        victim.close()
        for c in idle:
            c.close()
    assert b.alive()


def test_dashboard_with_token(make_broker, browser):
    b = make_broker(admin={"enabled": True, "token": TOKEN})
    # Without the token the feed is refused; the page itself (no data) is served.
    assert get(b.admin_port, FEED).status == 401
    assert get(b.admin_port, FEED, token="wrong").status == 401
    assert get(b.admin_port, "/").status == 200
    client = raw_connected(b.port, client_id=unique("tok"))
    try:
        browser.get(f"http://127.0.0.1:{b.admin_port}/")
        wait_until(lambda: visible(browser, "token-form"), 10, 0.1, "the page to ask for the token")
        assert text_of(browser, "conn-total") == "–"
        browser.find_element("id", "token-input").send_keys("wrong")
        browser.find_element("id", "token-submit").click()
        wait_until(lambda: visible(browser, "token-error"), 10, 0.1, "the page to say the token was refused")
        browser.find_element("id", "token-input").send_keys(TOKEN)
        browser.find_element("id", "token-submit").click()
        wait_until(lambda: text_of(browser, "feed-state") == "live", 10, 0.1, "the feed to go live with the token")
        wait_until(lambda: number(text_of(browser, "conn-total")) == 1, 10, 0.1, "the connection count")
        assert not visible(browser, "token-form")
        # The token lives in the tab's session storage, never in a cookie.
        assert browser.execute_script("return sessionStorage.getItem('iotgw.admin.token')") == TOKEN
        assert browser.get_cookies() == []
        # The clients view works with it too.
        browser.find_element("id", "tab-clients").click()
        wait_until(lambda: "1 matching" in text_of(browser, "client-total"), 10, 0.1, "the clients view")
    finally:
        client.close()


# --------------------------------------------------------------------------------------
# The feed's HTTP contract (no browser)


def test_feed_events_and_session_cap(make_broker):
    b = make_broker(admin={"enabled": True, "dashboard_sessions": 2})
    first = Feed(b.admin_port)
    second = Feed(b.admin_port, query="?watch=cap/%23")
    try:
        snapshot = first.wait_for("snapshot")
        head = first.head.lower()
        assert head.startswith(b"http/1.1 200 ok\r\n")
        assert b"content-type: text/event-stream" in head and b"transfer-encoding: chunked" in head
        assert first.events()[0] == ("history", {"points": []})
        assert snapshot["dashboard"] == {"sessions": 2, "max_sessions": 2}
        assert set(snapshot["connections"]["by_transport"]) == {"tcp", "tls", "ws", "wss"}
        assert snapshot["readiness"]["status"] == "ready"
        assert snapshot["storage"]["enabled"] is True and snapshot["storage"]["pool_size"] == 4
        second.wait_for("snapshot")
        # A third is refused while two are open.
        r = get(b.admin_port, FEED)
        assert r.status == 503 and r.headers["retry-after"] == "5", r
        # A watched message arrives as a watch event; a bad filter is refused.
        with raw_connected(b.port, client_id=unique("cap-pub")) as pub:
            pub.send(publish_packet("cap/x", b"\x00\x01binary"))
            watch = second.wait_for("watch")
        assert watch["filter"] == "cap/#"
        assert watch["messages"][0]["topic"] == "cap/x" and watch["messages"][0]["hex"] == "000162696e617279"
    finally:
        first.close()
        second.close()
    # The closed sessions are noticed (at their next write) and free their places.
    wait_until(lambda: http_request(b.admin_port, "GET", FEED + "?watch=a/%23/b").status == 400, 10, 0.2,
               "room for a new session (answered 400 for its bad filter)")


def test_dashboard_disabled(make_broker):
    b = make_broker(admin={"enabled": True, "dashboard": False})
    assert get(b.admin_port, "/").status == 404
    assert get(b.admin_port, FEED).status == 404
    assert get(b.admin_port, "/api/v1/stats").status == 200
