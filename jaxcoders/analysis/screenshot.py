"""A PNG of an HTML report as a browser shows it: headless Chromium driven by Selenium.

    from jaxcoders.analysis.screenshot import screenshot
    screenshot("demo_out/report/l1/report.html", "l1.png")

Needs the `selenium` package and a local Chromium with its chromedriver (Debian:
`apt-get install chromium chromium-driver`); nothing is downloaded (Selenium Manager is kept
offline). Used by `experiments/report.py --screenshot` and for the README's pictures.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path


class BrowserMissing(RuntimeError):
    pass


def find_chromium() -> tuple[str, str]:
    """(chromium binary, chromedriver) or BrowserMissing with the install line."""
    binary = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    driver = shutil.which("chromedriver") or next(
        (p for p in ("/usr/bin/chromedriver", "/usr/lib/chromium/chromedriver") if os.path.exists(p)), None)
    if not binary or not driver:
        raise BrowserMissing(f"chromium ({binary}) or chromedriver ({driver}) not found; on Debian/Ubuntu: "
                             "apt-get install chromium chromium-driver")
    return binary, driver


def open_browser(profile_dir, *, width: int = 1600, height: int = 1200, console_log: bool = False):
    """A headless Chromium WebDriver (the caller quits it) with its profile in `profile_dir`;
    BrowserMissing when selenium, chromium or chromedriver is not installed. `console_log`
    keeps the page's console messages for `driver.get_log("browser")`."""
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError as e:
        raise BrowserMissing("the selenium package is missing: pip install selenium") from e
    binary, driver = find_chromium()
    os.environ.setdefault("SE_OFFLINE", "true")  # never let Selenium Manager download a driver
    opts = webdriver.ChromeOptions()
    opts.binary_location = binary
    for a in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
              "--disable-background-networking", "--disable-component-update", "--disable-sync",
              f"--user-data-dir={profile_dir}", f"--window-size={width},{height}", "--hide-scrollbars"):
        opts.add_argument(a)
    if console_log:
        opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(options=opts, service=Service(driver))


def screenshot(html_path, png_path, *, width: int = 1600, height: int = 1200, fragment: str = "",
               scroll_to: str = "", timeout_s: float = 30.0) -> Path:
    """Open `html_path` from disk (optionally with a `#latent-<j>` fragment), wait until the
    report's script has run (`body[data-ready=1]`), scroll the element matching the CSS selector
    `scroll_to` (e.g. "#causal") to the top if given, and save the viewport as `png_path`."""
    html_path, png_path = Path(html_path).resolve(), Path(png_path)
    if not html_path.is_file():
        raise FileNotFoundError(f"{html_path} does not exist")
    with tempfile.TemporaryDirectory(prefix="jaxcoders-chromium-") as profile:
        drv = open_browser(profile, width=width, height=height)
        try:
            from selenium.webdriver.support.ui import WebDriverWait

            drv.get(html_path.as_uri() + fragment)
            WebDriverWait(drv, timeout_s).until(
                lambda d: d.execute_script("return document.body.dataset.ready === '1'"))
            if scroll_to:
                found = drv.execute_script(
                    "const e = document.querySelector(arguments[0]); if (e) e.scrollIntoView({block: 'start'});"
                    " return !!e;", scroll_to)
                if not found:
                    raise ValueError(f"scroll_to={scroll_to!r}: no such element in {html_path}")
            png_path.parent.mkdir(parents=True, exist_ok=True)
            drv.save_screenshot(str(png_path))
        finally:
            drv.quit()
    return png_path
