"""Headless Chromium for the browser-page tests (Debian's chromium and chromedriver, Selenium)."""

from __future__ import annotations

import shutil
from typing import Any

import pytest


def chromium_driver() -> Any:
    """Selenium on Debian's chromium + chromedriver; skips when they are not installed."""
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if chromium is None or driver is None:
        pytest.skip("the browser-page test needs Debian's chromium and chromium-driver (apt-get install)")
    webdriver = pytest.importorskip(
        "selenium.webdriver", reason="the browser-page test needs selenium (dev extra)"
    )
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--use-fake-device-for-media-stream",
        "--use-fake-ui-for-media-stream",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--window-size=1200,1000",
        # WebRTC on loopback: Chromium leaves loopback interfaces out of ICE unless told, and the
        # service takes 127.0.0.1 only. Its other candidates (the LAN address) are dropped by
        # the service, which also ignores checks sent from them. Host addresses stay plain IPs,
        # not mDNS names (the page has camera permission; the flag makes it certain).
        "--allow-loopback-in-peer-connection",
        "--disable-features=WebRtcHideLocalIpsWithMdns",
        # No name lookups: Chromium's background services (autofill, accounts, updates) ask DNS
        # for Google hosts even with --disable-background-networking. The page is at 127.0.0.1.
        "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
    ):
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(executable_path=driver), options=options)
