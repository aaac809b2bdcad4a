"""A real headless browser for the sign-in tests: Debian's Chromium driven through Selenium.

The test starts ``chromium`` itself (headless, a fresh profile in a temporary directory,
``--no-sandbox`` only when running as root, every background service that would reach the
network switched off) and ``chromedriver`` attaches to it, so both processes are the test's
own and :meth:`Browser.close` stops each by its PID. Selenium Manager never runs: the driver
is given by path (``/usr/bin/chromedriver``, Debian's ``chromium-driver``, the same build as
the browser), so nothing is downloaded. ``scripts/test`` installs both packages.

Small API for the tests: :meth:`~Browser.open`, :meth:`~Browser.fill` an input by name,
:meth:`~Browser.set_checked` a checkbox by name and value, :meth:`~Browser.click` a button by
its text or value, :attr:`~Browser.url`, :meth:`~Browser.wait_for_url` (bounded),
:meth:`~Browser.text`, :meth:`~Browser.screenshot`. Every wait is bounded by ``timeout``
seconds and raises :class:`BrowserError` naming the page it was on.
"""

from __future__ import annotations

import base64
import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
import warnings
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from selenium import webdriver
from selenium.common.exceptions import (
    NoSuchElementException,
    StaleElementReferenceException,
    WebDriverException,
)
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webelement import WebElement

# Debian's launcher /usr/bin/chromium is a shell script that execs this binary (and prints
# a harmless shell error on machines with several /dev/shm mounts); run the binary itself.
CHROMIUM_CANDIDATES = (Path("/usr/lib/chromium/chromium"), Path("/usr/bin/chromium"))
CHROMEDRIVER = Path("/usr/bin/chromedriver")
INSTALL_HINT = (
    "run scripts/test (it installs them), or as root: "
    "apt-get install -y --no-install-recommends chromium chromium-driver"
)

# Flags that keep a test browser quiet and on loopback: no first-run UI, no sync, no
# component or safe-browsing updates, no metrics, no proxy from the environment.
CHROMIUM_FLAGS = (
    "--headless",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--no-first-run",
    "--no-default-browser-check",
    "--no-proxy-server",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-default-apps",
    "--disable-extensions",
    "--disable-domain-reliability",
    "--disable-client-side-phishing-detection",
    "--disable-features=Translate,OptimizationHints,MediaRouter,AutofillServerCommunication",
    "--metrics-recording-only",
    "--no-pings",
    "--password-store=basic",
    "--remote-debugging-address=127.0.0.1",
    "--remote-debugging-port=0",
)


class BrowserError(AssertionError):
    """A browser step did not happen in time or found nothing; the message names the page."""


def chromium_path() -> Path:
    """The Chromium binary; raises :class:`BrowserError` with the install hint if missing."""
    for candidate in CHROMIUM_CANDIDATES:
        if os.access(candidate, os.X_OK):
            return candidate
    raise BrowserError(f"Debian's chromium is not installed: {INSTALL_HINT}")


def _xpath_literal(text: str) -> str:
    """``text`` as an XPath 1.0 string literal (which has no escape character)."""
    if "'" not in text:
        return f"'{text}'"
    if '"' not in text:
        return f'"{text}"'
    parts = text.split("'")
    return "concat(" + ", \"'\", ".join(f"'{part}'" for part in parts) + ")"


def _stop_process(process: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    """Stop ``process`` by its PID (SIGTERM, then SIGKILL) and its process group's leftovers."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout)
    # The browser was started in its own session: its group id is its PID. Helpers
    # (zygote, renderers) exit with it; this reaps any that did not.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)


class Browser:
    """One headless Chromium with a fresh profile, driven by chromedriver (Selenium).

    ``timeout`` (seconds) bounds every wait: start-up, finding an element, a page load after
    a click, :meth:`wait_for_url`. Use as a context manager or call :meth:`close`.
    """

    def __init__(
        self, *, timeout: float = 15.0, window: tuple[int, int] = (1000, 800)
    ) -> None:
        self.timeout = timeout
        if not os.access(CHROMEDRIVER, os.X_OK):
            raise BrowserError(f"Debian's chromium-driver is not installed: {INSTALL_HINT}")
        binary = chromium_path()
        self._profile = Path(tempfile.mkdtemp(prefix="jwtmcp-chromium-"))
        self._browser_log = self._profile.parent / f"{self._profile.name}.log"
        command = [
            str(binary),
            *CHROMIUM_FLAGS,
            f"--user-data-dir={self._profile}",
            f"--window-size={window[0]},{window[1]}",
        ]
        if os.geteuid() == 0:
            command.append("--no-sandbox")  # Chromium refuses to run as root with its sandbox
        command.append("about:blank")
        self._driver: webdriver.Chrome | None = None
        self._service: Service | None = None
        with self._browser_log.open("wb") as log:
            self.process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        try:
            port = self._wait_for_devtools_port()
            options = webdriver.ChromeOptions()
            options.debugger_address = f"127.0.0.1:{port}"
            with warnings.catch_warnings():
                # Deprecated in favour of a ClientConfig, which webdriver.Chrome() cannot
                # take yet; the driver is on loopback and must not go through a proxy.
                warnings.simplefilter("ignore", DeprecationWarning)
                options.ignore_local_proxy_environment_variables()
            self._service = Service(
                executable_path=str(CHROMEDRIVER),
                service_args=["--allowed-ips=127.0.0.1"],
                log_output=subprocess.DEVNULL,
                env={**os.environ, "SE_OFFLINE": "true"},
            )
            self._driver = webdriver.Chrome(options=options, service=self._service)
            self._driver.set_page_load_timeout(timeout)
        except BaseException:
            self.close()
            raise

    # --- life cycle -----------------------------------------------------------------------

    def _wait_for_devtools_port(self) -> int:
        """The DevTools port Chromium chose, from the file it writes into its profile."""
        port_file = self._profile / "DevToolsActivePort"
        deadline = time.monotonic() + self.timeout
        while True:
            with contextlib.suppress(OSError, ValueError, IndexError):
                return int(port_file.read_text().splitlines()[0])
            if self.process.poll() is not None:
                raise BrowserError(
                    f"chromium exited with status {self.process.returncode}:\n"
                    + self._browser_log.read_text(errors="replace")[-4000:]
                )
            if time.monotonic() > deadline:
                raise BrowserError("chromium did not open its DevTools port in time")
            time.sleep(0.05)

    @property
    def driver_pid(self) -> int | None:
        """PID of the chromedriver process (None before it started)."""
        process = getattr(self._service, "process", None)
        return None if process is None else int(process.pid)

    def close(self) -> None:
        """Stop chromedriver and Chromium, each by its PID, and delete the profile."""
        driver, self._driver = self._driver, None
        if driver is not None:
            with contextlib.suppress(WebDriverException, OSError):
                driver.quit()  # also stops the chromedriver service
        process = getattr(self._service, "process", None)
        if process is not None:
            _stop_process(process)
        _stop_process(self.process)
        shutil.rmtree(self._profile, ignore_errors=True)
        with contextlib.suppress(OSError):
            self._browser_log.unlink()

    def __enter__(self) -> Browser:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def driver(self) -> webdriver.Chrome:
        """The Selenium driver, for what the small API does not cover."""
        if self._driver is None:
            raise BrowserError("the browser is closed")
        return self._driver

    # --- pages ----------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """The current page's URL."""
        return str(self.driver.current_url)

    def open(self, url: str) -> None:
        """Load ``url`` and wait (bounded) until it has loaded; BrowserError if it cannot."""
        try:
            self.driver.get(url)
        except WebDriverException as exc:
            reason = (exc.msg or str(exc)).splitlines()[0]
            raise BrowserError(f"could not load {url}: {reason}") from None

    def text(self) -> str:
        """The visible text of the page (``document.body.innerText``)."""
        script = "return document.body ? document.body.innerText : ''"
        return str(self.driver.execute_script(script))

    def _find(self, description: str, by: str, selector: str) -> WebElement:
        deadline = time.monotonic() + self.timeout
        while True:
            with contextlib.suppress(NoSuchElementException, StaleElementReferenceException):
                element = self.driver.find_element(by, selector)
                if element.is_displayed() or element.get_attribute("type") == "hidden":
                    return element
            if time.monotonic() > deadline:
                raise BrowserError(f"no {description} on {self.url}")
            time.sleep(0.05)

    def fill(self, name: str, value: str) -> None:
        """Type ``value`` into the input named ``name`` (cleared first)."""
        element = self._find(f"input named {name!r}", By.NAME, name)
        element.clear()
        element.send_keys(value)

    def set_checked(self, name: str, value: str, checked: bool) -> None:
        """Tick or untick the checkbox with this ``name`` and ``value`` (by clicking it)."""
        selector = (
            f"//input[@type='checkbox' and @name={_xpath_literal(name)}"
            f" and @value={_xpath_literal(value)}]"
        )
        element = self._find(f"checkbox {name}={value!r}", By.XPATH, selector)
        if element.is_selected() != checked:
            element.click()
        if element.is_selected() != checked:
            raise BrowserError(f"checkbox {name}={value!r} did not change on {self.url}")

    def checked_values(self, name: str) -> list[str]:
        """The values of the ticked checkboxes named ``name``, in page order."""
        elements = self.driver.find_elements(By.NAME, name)
        return [str(e.get_attribute("value")) for e in elements if e.is_selected()]

    def click(self, label: str, *, wait_for_page: bool = True) -> None:
        """Click the button whose text (or an input button's value) is ``label``.

        With ``wait_for_page`` (the default, for submit buttons and links) waits until the
        click has replaced the page and the new one has loaded.
        """
        literal = _xpath_literal(label)
        selector = (
            f"//button[normalize-space(.)={literal}]"
            f" | //input[(@type='submit' or @type='button') and @value={literal}]"
        )
        element = self._find(f"button {label!r}", By.XPATH, selector)
        old_page = self.driver.find_element(By.TAG_NAME, "html")
        element.click()
        if wait_for_page:
            self._wait(lambda: self._is_stale(old_page), f"a new page after clicking {label!r}")
            self._wait(
                lambda: self.driver.execute_script("return document.readyState") == "complete",
                "the page to load",
            )

    @staticmethod
    def _is_stale(element: WebElement) -> bool:
        try:
            element.is_enabled()
        except StaleElementReferenceException:
            return True
        except WebDriverException as exc:
            # While the old document is torn down, chromedriver may answer "Node with given
            # id does not belong to the document" instead of a stale-element error.
            if "does not belong to the document" in str(exc):
                return True
            raise
        return False

    def _wait(self, condition: Any, what: str, timeout: float | None = None) -> None:
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while True:
            with contextlib.suppress(StaleElementReferenceException, NoSuchElementException):
                if condition():
                    return
            if time.monotonic() > deadline:
                raise BrowserError(f"waited in vain for {what}; the page is {self.url}")
            time.sleep(0.05)

    def wait_for_url(self, prefix: str, timeout: float | None = None) -> str:
        """Wait (at most ``timeout`` seconds, default the browser's) until the URL starts
        with ``prefix``; return it. Raises :class:`BrowserError` naming the URL it is at."""
        self._wait(lambda: self.url.startswith(prefix), f"a URL starting {prefix!r}", timeout)
        return self.url

    def screenshot(self, path: Path, *, full_page: bool = True) -> Path:
        """Save a PNG of the page (the whole page, or the window) to ``path``; return it."""
        path.parent.mkdir(parents=True, exist_ok=True)
        if full_page:
            metrics = self.driver.execute_cdp_cmd("Page.getLayoutMetrics", {})
            size = metrics["cssContentSize"]
            shot = self.driver.execute_cdp_cmd(
                "Page.captureScreenshot",
                {
                    "format": "png",
                    "captureBeyondViewport": True,
                    "clip": {
                        "x": 0,
                        "y": 0,
                        "width": size["width"],
                        "height": size["height"],
                        "scale": 1,
                    },
                },
            )
            path.write_bytes(base64.b64decode(shot["data"]))
        elif not self.driver.save_screenshot(str(path)):
            raise BrowserError(f"no screenshot of {self.url}")
        return path


@contextlib.contextmanager
def open_browser(**kwargs: Any) -> Iterator[Browser]:
    """A :class:`Browser` for a ``with`` block; both its processes are stopped at the end."""
    browser = Browser(**kwargs)
    try:
        yield browser
    finally:
        browser.close()


def png_summary(data: bytes, *, max_colours: int = 64) -> tuple[int, int, int]:
    """Check ``data`` is a whole, valid 8-bit RGB(A) PNG; return (width, height, colours).

    Every chunk's CRC is checked and the image data must inflate to exactly its rows, so a
    viewer can show it; ``colours`` counts distinct pixel colours up to ``max_colours`` (one
    means a blank page). Raises ValueError on anything else.
    """
    if not data.startswith(b"\x89PNG\r\n\x1a\n"):
        raise ValueError("not a PNG signature")
    offset, chunks = 8, []
    while offset < len(data):
        length = int.from_bytes(data[offset : offset + 4], "big")
        kind = data[offset + 4 : offset + 8]
        body = data[offset + 8 : offset + 8 + length]
        crc = int.from_bytes(data[offset + 8 + length : offset + 12 + length], "big")
        if len(body) != length or zlib.crc32(kind + body) != crc:
            raise ValueError(f"chunk {kind!r} is cut short or has a bad CRC")
        chunks.append((kind, body))
        offset += 12 + length
    if not chunks or chunks[0][0] != b"IHDR" or chunks[-1][0] != b"IEND":
        raise ValueError("PNG does not start with IHDR and end with IEND")
    header = chunks[0][1]
    width, height = int.from_bytes(header[0:4], "big"), int.from_bytes(header[4:8], "big")
    depth, colour_type, interlace = header[8], header[9], header[12]
    if depth != 8 or colour_type not in (2, 6) or interlace != 0:
        raise ValueError(f"unexpected PNG format: depth {depth}, colour type {colour_type}")
    bpp = 3 if colour_type == 2 else 4
    raw = zlib.decompress(b"".join(body for kind, body in chunks if kind == b"IDAT"))
    stride = width * bpp
    if len(raw) != height * (stride + 1):
        raise ValueError("image data does not match the PNG's size")
    colours: set[bytes] = set()
    previous = bytearray(stride)
    for row_index in range(height):
        start = row_index * (stride + 1)
        kind, row = raw[start], bytearray(raw[start + 1 : start + 1 + stride])
        for i in range(stride):  # undo the row filter (PNG spec section 9)
            left = row[i - bpp] if i >= bpp else 0
            up = previous[i]
            if kind == 1:
                row[i] = (row[i] + left) & 0xFF
            elif kind == 2:
                row[i] = (row[i] + up) & 0xFF
            elif kind == 3:
                row[i] = (row[i] + (left + up) // 2) & 0xFF
            elif kind == 4:
                up_left = previous[i - bpp] if i >= bpp else 0
                estimate = left + up - up_left
                pa, pb, pc = abs(estimate - left), abs(estimate - up), abs(estimate - up_left)
                predictor = left if pa <= pb and pa <= pc else up if pb <= pc else up_left
                row[i] = (row[i] + predictor) & 0xFF
            elif kind != 0:
                raise ValueError(f"unknown PNG filter {kind}")
        colours.update(bytes(row[i : i + bpp]) for i in range(0, stride, bpp))
        if len(colours) >= max_colours:
            break  # enough to tell a rendered page from a blank one
        previous = row
    return width, height, min(len(colours), max_colours)
