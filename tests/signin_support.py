"""The browser step of an interactive sign-in, done over HTTP, for the Python SDK's client.

``mcp.client.auth.OAuthClientProvider`` hands the authorization URL to a *redirect handler*
and then asks a *callback handler* for the code. :class:`SignInHandlers` supplies both: the
redirect handler follows the issuer's pages as a person would (the contract of issue 10: a
login form with inputs named ``username``, ``password``, hidden ``csrf_token`` and
``request``; a consent form with one ``scope`` checkbox per tool and ``decision`` buttons),
keeping the session cookie between the steps, and stops at the 303 to the client's redirect
URI, whose query (``code``, ``state``, ``iss`` or ``error``) the callback handler returns.

Forms are read with the standard library's ``html.parser``: inputs by name, hidden fields
sent back as they came, checkboxes sent only when ticked (minus those the test unticks).
Every request has a timeout and the walk has a step limit, so a broken page ends the flow
with :class:`SignInError` naming what was there instead of hanging.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from html.parser import HTMLParser
from urllib.parse import parse_qsl, urljoin, urlsplit

import httpx2
from mcp import Client
from mcp.client.auth import OAuthClientProvider
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.auth import (
    AuthorizationCodeResult,
    OAuthClientInformationFull,
    OAuthClientMetadata,
    OAuthToken,
)
from pydantic import AnyUrl

MAX_STEPS = 8
REQUEST_TIMEOUT = 10.0  # seconds, per request


class SignInError(AssertionError):
    """The pages did not lead to the client's redirect URI; says where and why."""

    def __init__(self, message: str, *, status: int | None = None, page_text: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.page_text = page_text


# --- reading forms -----------------------------------------------------------------------


@dataclass(frozen=True)
class FormInput:
    """One ``<input>``, ``<select>`` or ``<textarea>``: type (lower case), name, value."""

    name: str
    type: str = "text"
    value: str = ""
    checked: bool = False
    id: str | None = None


@dataclass(frozen=True)
class FormButton:
    """One submit button: its ``name``/``value`` (sent when it is the one clicked), its text."""

    name: str | None
    value: str
    text: str


@dataclass
class HtmlForm:
    """One ``<form>``: ``action`` as written (resolve it against the page URL), ``method``
    in lower case, its inputs and submit buttons in page order, and label texts by ``for``."""

    action: str
    method: str
    inputs: list[FormInput] = field(default_factory=list)
    buttons: list[FormButton] = field(default_factory=list)
    labels: dict[str, str] = field(default_factory=dict)

    def input(self, name: str) -> FormInput | None:
        """The first input named ``name``, or None."""
        return next((i for i in self.inputs if i.name == name), None)

    def checkboxes(self, name: str) -> list[FormInput]:
        """The checkboxes named ``name``, ticked or not, in page order."""
        return [i for i in self.inputs if i.type == "checkbox" and i.name == name]

    def button(self, text_or_value: str) -> FormButton | None:
        """The submit button whose text or value is ``text_or_value``, or None."""
        return next(
            (b for b in self.buttons if text_or_value in (b.text, b.value)), None
        )


class _FormParser(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.forms: list[HtmlForm] = []
        self.title = ""
        self._form: HtmlForm | None = None
        self._button: dict[str, str | None] | None = None
        self._button_text: list[str] = []
        self._label_for: str | None = None
        self._label_text: list[str] = []
        self._in_title = False
        self._text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        if tag == "title":
            self._in_title = True
        elif tag == "form":
            self._form = HtmlForm(
                action=attributes.get("action") or "",
                method=(attributes.get("method") or "get").lower(),
            )
            self.forms.append(self._form)
        elif tag == "label":
            self._label_for, self._label_text = attributes.get("for"), []
        elif self._form is None:
            return
        elif tag == "button":
            self._button, self._button_text = attributes, []
        elif tag in ("input", "select", "textarea"):
            kind = (attributes.get("type") or ("text" if tag != "select" else "select")).lower()
            name = attributes.get("name")
            if tag == "input" and kind in ("submit", "image"):
                self._form.buttons.append(
                    FormButton(name, attributes.get("value") or "", attributes.get("value") or "")
                )
            elif name:
                self._form.inputs.append(
                    FormInput(
                        name=name,
                        type=kind,
                        value=attributes.get("value") or ("on" if kind == "checkbox" else ""),
                        checked="checked" in attributes,
                        id=attributes.get("id"),
                    )
                )

    def handle_endtag(self, tag: str) -> None:
        if tag == "title":
            self._in_title = False
        elif tag == "form":
            self._form = None
        elif tag == "label" and self._label_for is not None:
            if self.forms:
                self.forms[-1].labels[self._label_for] = " ".join("".join(self._label_text).split())
            self._label_for = None
        elif tag == "button" and self._button is not None and self._form is not None:
            if (self._button.get("type") or "submit").lower() == "submit":
                text = " ".join("".join(self._button_text).split())
                self._form.buttons.append(
                    FormButton(self._button.get("name"), self._button.get("value") or "", text)
                )
            self._button = None

    def handle_data(self, data: str) -> None:
        if self._in_title:
            self.title += data
        if self._button is not None:
            self._button_text.append(data)
        if self._label_for is not None:
            self._label_text.append(data)
        self._text.append(data)

    def text(self) -> str:
        return " ".join(" ".join(self._text).split())


def parse_forms(html: str) -> list[HtmlForm]:
    """Every ``<form>`` of an HTML page, with its inputs, submit buttons and labels."""
    parser = _FormParser()
    parser.feed(html)
    parser.close()
    return parser.forms


def page_text(html: str) -> str:
    """The text of an HTML page, whitespace collapsed (for error messages and assertions)."""
    parser = _FormParser()
    parser.feed(html)
    parser.close()
    return parser.text()


# --- following the pages -------------------------------------------------------------------


@dataclass(frozen=True)
class SignInResult:
    """Where the pages led: the redirect's query (``code``, ``state``, ``iss``, or ``error``
    and ``error_description``), the pages passed (``"login"``, ``"consent"``), the scopes the
    consent page offered (ticked or not) and those sent back approved."""

    redirect_url: str
    params: dict[str, str]
    pages: tuple[str, ...]
    offered_scopes: tuple[str, ...] = ()
    approved_scopes: tuple[str, ...] = ()

    @property
    def code(self) -> str | None:
        return self.params.get("code")

    @property
    def state(self) -> str | None:
        return self.params.get("state")

    @property
    def error(self) -> str | None:
        return self.params.get("error")

    def code_result(self) -> AuthorizationCodeResult:
        """The SDK's callback value; raises SignInError when the redirect carries an error."""
        if self.code is None:
            description = self.params.get("error_description", "")
            raise SignInError(f"authorization refused: {self.error} {description}".strip())
        return AuthorizationCodeResult(
            code=self.code, state=self.state, iss=self.params.get("iss")
        )


def _login_fields(form: HtmlForm, username: str, password: str) -> list[tuple[str, str]]:
    fields: list[tuple[str, str]] = []
    for item in form.inputs:
        if item.name == "username":
            fields.append(("username", username))
        elif item.name == "password":
            fields.append(("password", password))
        elif item.type in ("hidden", "text", "email"):
            fields.append((item.name, item.value))
    button = form.buttons[0] if form.buttons else None
    if button is not None and button.name:
        fields.append((button.name, button.value))
    return fields


def _consent_fields(
    form: HtmlForm, untick: Iterable[str], decision: str
) -> tuple[list[tuple[str, str]], tuple[str, ...], tuple[str, ...]]:
    unticked = set(untick)
    fields: list[tuple[str, str]] = []
    offered: list[str] = []
    approved: list[str] = []
    for item in form.inputs:
        if item.type == "checkbox":
            if item.name == "scope":
                offered.append(item.value)
            if item.checked and item.value not in unticked:
                fields.append((item.name, item.value))
                if item.name == "scope":
                    approved.append(item.value)
        elif item.type == "hidden":
            fields.append((item.name, item.value))
    buttons = [b for b in form.buttons if b.name == "decision" and b.value == decision]
    if not buttons:
        raise SignInError(f"the consent form has no decision={decision!r} button")
    fields.append(("decision", decision))
    return fields, tuple(offered), tuple(approved)


def _kind(form: HtmlForm) -> str:
    if form.input("password") is not None:
        return "login"
    if form.checkboxes("scope") or any(b.name == "decision" for b in form.buttons):
        return "consent"
    return "other"


async def follow_sign_in(
    authorization_url: str,
    *,
    redirect_uri: str,
    username: str,
    password: str,
    untick: Sequence[str] = (),
    decision: str = "approve",
    cookies: httpx2.Cookies | None = None,
    max_steps: int = MAX_STEPS,
) -> SignInResult:
    """Follow the issuer's pages from ``authorization_url`` to the redirect to ``redirect_uri``.

    Signs in on a login form, then sends the consent form with ``decision`` (``"approve"`` or
    ``"deny"``) and every ticked ``scope`` box except those in ``untick`` (``"tool:add"``).
    ``cookies`` (kept across calls, like a browser's) carries the session between rounds.
    Raises :class:`SignInError` for a non-200 page that is no redirect, a page with neither
    form, a login form shown again (refused credentials), or more than ``max_steps`` steps.
    """
    jar = cookies if cookies is not None else httpx2.Cookies()
    pages: list[str] = []
    offered: tuple[str, ...] = ()
    approved: tuple[str, ...] = ()
    async with httpx2.AsyncClient(
        cookies=jar, timeout=REQUEST_TIMEOUT, follow_redirects=False, trust_env=False
    ) as client:
        request = client.build_request("GET", authorization_url)
        for _ in range(max_steps):
            response = await client.send(request)
            url = str(response.url)
            if response.is_redirect:
                target = urljoin(url, response.headers.get("location", ""))
                if target.startswith(redirect_uri):
                    _keep_cookies(client.cookies, jar)
                    return SignInResult(
                        redirect_url=target,
                        params=dict(parse_qsl(urlsplit(target).query)),
                        pages=tuple(pages),
                        offered_scopes=offered,
                        approved_scopes=approved,
                    )
                if urlsplit(target).netloc != urlsplit(url).netloc:
                    raise SignInError(f"redirected to another host: {urlsplit(target).netloc}")
                request = client.build_request("GET", target)
                continue
            html = response.text
            if response.status_code != 200:
                raise SignInError(
                    f"{request.method} {urlsplit(url).path} answered {response.status_code}: "
                    f"{page_text(html)[:300]}",
                    status=response.status_code,
                    page_text=page_text(html),
                )
            forms = [f for f in parse_forms(html) if f.method == "post"]
            kinds = {_kind(f): f for f in reversed(forms)}
            if "login" in kinds:
                if pages and pages[-1] == "login":
                    raise SignInError(
                        f"the login form came back: {page_text(html)[:300]}",
                        status=response.status_code,
                        page_text=page_text(html),
                    )
                form, fields = kinds["login"], _login_fields(kinds["login"], username, password)
                pages.append("login")
            elif "consent" in kinds:
                form = kinds["consent"]
                fields, offered, approved = _consent_fields(form, untick, decision)
                pages.append("consent")
            else:
                raise SignInError(
                    f"no login or consent form at {urlsplit(url).path}: {page_text(html)[:300]}",
                    status=response.status_code,
                    page_text=page_text(html),
                )
            request = client.build_request(
                "POST", urljoin(url, form.action or url), data=_form_data(fields)
            )
    raise SignInError(f"no redirect to {redirect_uri} after {max_steps} steps ({pages})")


def _keep_cookies(source: httpx2.Cookies, jar: httpx2.Cookies) -> None:
    for cookie in source.jar:  # with domain and path, unlike a copy by name
        jar.jar.set_cookie(cookie)


def _form_data(fields: list[tuple[str, str]]) -> dict[str, list[str]]:
    """Form fields in order, repeated names kept (httpx takes a list per name)."""
    data: dict[str, list[str]] = {}
    for name, value in fields:
        data.setdefault(name, []).append(value)
    return data


class SignInHandlers:
    """``redirect_handler`` and ``callback_handler`` for the SDK's ``OAuthClientProvider``.

    Each authorization round follows the pages with :func:`follow_sign_in` (one cookie jar
    for all rounds, as one browser); ``rounds`` keeps every :class:`SignInResult` for the
    test to inspect (e.g. that a step-up's consent offered only the new tool).
    ``untick`` may be changed between rounds.
    """

    def __init__(
        self,
        *,
        redirect_uri: str,
        username: str,
        password: str,
        untick: Sequence[str] = (),
        decision: str = "approve",
    ) -> None:
        self.redirect_uri = redirect_uri
        self.username = username
        self.password = password
        self.untick = list(untick)
        self.decision = decision
        self.cookies = httpx2.Cookies()
        self.rounds: list[SignInResult] = []

    async def redirect_handler(self, authorization_url: str) -> None:
        result = await follow_sign_in(
            authorization_url,
            redirect_uri=self.redirect_uri,
            username=self.username,
            password=self.password,
            untick=self.untick,
            decision=self.decision,
            cookies=self.cookies,
        )
        self.rounds.append(result)

    async def callback_handler(self) -> AuthorizationCodeResult:
        if not self.rounds:
            raise SignInError("callback before any redirect")
        return self.rounds[-1].code_result()



# --- wiring for the SDK's OAuthClientProvider ------------------------------------------------


class MemoryTokenStorage:
    """The SDK's ``TokenStorage`` in memory. ``token_saves`` counts ``set_tokens`` calls:
    one per code exchange and one per refresh, so refreshes = saves - authorization rounds."""

    def __init__(self) -> None:
        self.tokens: OAuthToken | None = None
        self.client_info: OAuthClientInformationFull | None = None
        self.token_saves = 0

    async def get_tokens(self) -> OAuthToken | None:
        return self.tokens

    async def set_tokens(self, tokens: OAuthToken) -> None:
        self.tokens = tokens
        self.token_saves += 1

    async def get_client_info(self) -> OAuthClientInformationFull | None:
        return self.client_info

    async def set_client_info(self, client_info: OAuthClientInformationFull) -> None:
        self.client_info = client_info


def sign_in_client(
    server_url: str,
    handlers: SignInHandlers,
    storage: MemoryTokenStorage,
    *,
    client_metadata_url: str | None = None,
    client_name: str = "jwtmcp Python test client",
    timeout: float = 10.0,
) -> Client:
    """An ``mcp.Client`` for ``server_url`` (Streamable HTTP) whose HTTP client carries the
    SDK's unchanged ``OAuthClientProvider``, with ``handlers`` as the browser step.
    ``client_metadata_url`` (https) registers by CIMD where the issuer supports it, else the
    SDK registers by RFC 7591. Use as ``async with sign_in_client(...) as client:``."""
    provider = OAuthClientProvider(
        server_url=server_url,
        client_metadata=OAuthClientMetadata(
            client_name=client_name,
            redirect_uris=[AnyUrl(handlers.redirect_uri)],
            grant_types=["authorization_code", "refresh_token"],
            response_types=["code"],
            token_endpoint_auth_method="none",
        ),
        storage=storage,
        redirect_handler=handlers.redirect_handler,
        callback_handler=handlers.callback_handler,
        client_metadata_url=client_metadata_url,
    )
    http = httpx2.AsyncClient(auth=provider, timeout=timeout, trust_env=False)
    transport = streamable_http_client(server_url, http_client=http)
    return Client(transport, read_timeout_seconds=timeout)
