"""The browser fixture itself (tests/browser.py), on a small form page served on loopback.

The page mimics the sign-in contract's shape (inputs by name, ticked scope checkboxes, a
submit button by its text, a 303 after the POST), so what the sign-in tests rely on is
checked here before any issuer is involved.
"""

from __future__ import annotations

import html
import os
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Route

from tests.browser import Browser, BrowserError, open_browser, png_summary
from tests.support import free_port, serve_app

FORM = """<!doctype html>
<html><head><title>Sign in</title>
<style>body{font-family:sans-serif;margin:3em;background:#f4f6fa}
form{background:#fff;padding:2em;border-radius:8px;max-width:24em}
button{background:#1f5fbf;color:#fff;border:0;padding:.6em 1.4em;border-radius:4px}</style>
</head><body><h1>Sign in to the test page</h1>
<form method="post" action="/submit">
<p><label for="username">Name</label> <input id="username" name="username"></p>
<p><label for="password">Password</label> <input id="password" name="password" type="password"></p>
<input type="hidden" name="csrf_token" value="t0k3n">
<p><input type="checkbox" name="scope" value="tool:add" id="scope-tool-add" checked>
<label for="scope-tool-add">add</label></p>
<p><input type="checkbox" name="scope" value="tool:subtract" id="scope-tool-subtract" checked>
<label for="scope-tool-subtract">subtract</label></p>
<button type="submit" name="decision" value="deny">Deny</button>
<button type="submit" name="decision" value="approve">Sign in</button>
</form></body></html>"""


async def form_page(request: Request) -> Response:
    return HTMLResponse(FORM)


async def submit(request: Request) -> Response:
    form = await request.form()
    query = urlencode(
        [(key, str(value)) for key, value in form.multi_items()], doseq=True
    )
    return RedirectResponse(f"/done?{query}", status_code=303)


async def done(request: Request) -> Response:
    return HTMLResponse(f"<p>received {html.escape(str(request.url.query))}</p>")


async def to_closed_port(request: Request) -> Response:
    port = request.query_params["port"]
    return RedirectResponse(f"http://127.0.0.1:{port}/callback?code=c0de&state=s", status_code=303)


async def never_leaves(request: Request) -> Response:
    return HTMLResponse("<p>this page never redirects</p>")


@pytest.fixture(scope="module")
def form_site() -> Iterator[str]:
    app = Starlette(
        routes=[
            Route("/", form_page),
            Route("/submit", submit, methods=["POST"]),
            Route("/done", done),
            Route("/stay", never_leaves),
            Route("/leave", to_closed_port, methods=["POST"]),
        ]
    )
    with serve_app(app) as base_url:
        yield base_url


def submitted(url: str) -> dict[str, list[str]]:
    return parse_qs(urlsplit(url).query)


def test_browser_fills_inputs_by_name_and_submits_with_the_button_named_by_its_text(
    browser: Browser, form_site: str
) -> None:
    browser.open(f"{form_site}/")
    browser.fill("username", "alice")
    browser.fill("password", "s3cret pass")
    browser.click("Sign in")
    url = browser.wait_for_url(f"{form_site}/done?")
    fields = submitted(url)
    assert fields["username"] == ["alice"]
    assert fields["password"] == ["s3cret pass"]
    assert fields["csrf_token"] == ["t0k3n"]
    assert fields["decision"] == ["approve"]  # the clicked button, not the other one
    assert "received" in browser.text()


def test_browser_unticks_one_checkbox_and_the_form_sends_only_the_others(
    browser: Browser, form_site: str
) -> None:
    browser.open(f"{form_site}/")
    assert browser.checked_values("scope") == ["tool:add", "tool:subtract"]
    browser.set_checked("scope", "tool:subtract", False)
    assert browser.checked_values("scope") == ["tool:add"]
    browser.click("Sign in")
    assert submitted(browser.wait_for_url(f"{form_site}/done?"))["scope"] == ["tool:add"]


def test_browser_screenshot_is_a_valid_png_of_the_rendered_page(
    browser: Browser, form_site: str, screenshot_dir: Path
) -> None:
    browser.open(f"{form_site}/")
    path = browser.screenshot(screenshot_dir / "browser-support-form.png")
    width, height, colours = png_summary(path.read_bytes())
    assert width == 1000  # the window's width
    assert height >= 300
    assert colours > 8  # text, a button and a card on a background: not a blank page


def test_wait_for_url_sees_a_redirect_to_a_loopback_port_nobody_listens_on(
    browser: Browser, form_site: str
) -> None:
    """A sign-in test needs no listener at the client's redirect URI: the browser's URL is
    the redirect target even though the page there fails to load."""
    port = free_port()
    browser.open(f"{form_site}/")
    browser.driver.execute_script(
        "document.forms[0].action = arguments[0]", f"/leave?port={port}"
    )
    browser.click("Sign in")
    url = browser.wait_for_url(f"http://127.0.0.1:{port}/callback?")
    assert submitted(url) == {"code": ["c0de"], "state": ["s"]}


def test_open_fails_naming_the_url_that_cannot_load(browser: Browser) -> None:
    url = f"http://127.0.0.1:{free_port()}/nothing-here"
    with pytest.raises(BrowserError, match=r"could not load .*/nothing-here: .*REFUSED"):
        browser.open(url)


def test_wait_for_url_gives_up_after_its_timeout_naming_the_current_page(
    browser: Browser, form_site: str
) -> None:
    browser.open(f"{form_site}/stay")
    with pytest.raises(BrowserError, match=r"/stay"):
        browser.wait_for_url(f"{form_site}/elsewhere", timeout=0.3)


def test_click_on_a_missing_button_fails_naming_the_button_and_page(form_site: str) -> None:
    with open_browser(timeout=0.5) as browser:
        browser.open(f"{form_site}/")
        with pytest.raises(BrowserError, match=r"no button 'Approve' on .*/"):
            browser.click("Approve")


def test_close_stops_the_browser_and_driver_processes_by_pid() -> None:
    browser = Browser()
    pids = [browser.process.pid, browser.driver_pid]
    assert all(pid is not None for pid in pids)
    browser.close()
    for pid in pids:
        assert pid is not None
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
