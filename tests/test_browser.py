"""The browser path in a real Chromium: the reference web app, CORS on a real S3, Uppy.

Set-up (module scope): the session's SeaweedFS with the CORS rules `avatar-signer
policies --allowed-origin <the app's origin>` generates; `avatar-signer serve` with a
callers file (the app is its one caller) and end-user tokens on; the app in examples/web
(its demo sign-in issues the user's token, which it forwards); a second copy of the app
on another port, an origin the rules do not name. Chromium is Debian's, driven by
Playwright, headless.

SeaweedFS answers every origin while the bucket has no CORS configuration, so the
foreign-origin tests are what show the rules are in force.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import secrets
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import run_local
import seaweed_s3
from servers import free_port
from webapp.serving import Background
from webapp.settings import WebSettings

CHROMIUM = os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium")
INSTALL_HINT = "apt-get install chromium chromium-driver"
# Root needs --no-sandbox; the rest keep Chromium off the network (none here but loopback).
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]
MAX_UPLOAD_BYTES = 1024 * 1024  # the service and the app, set alike
WAIT_MS = 20_000  # every Playwright wait is bounded

pytestmark = pytest.mark.s3

Stack = tuple[seaweed_s3.LocalS3, seaweed_s3.Identity, seaweed_s3.Identity]


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Debian's Chromium under Playwright; a clear failure (never a skip) without it."""
    if not (os.path.isfile(CHROMIUM) and os.access(CHROMIUM, os.X_OK)):
        pytest.fail(f"no Chromium at {CHROMIUM}: {INSTALL_HINT}", pytrace=False)
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("the playwright package is missing: make install", pytrace=False)
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS
        )
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def signer(local_s3: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """avatar-signer serve: callers file with the web app only, end-user tokens on."""
    workdir = tmp_path_factory.mktemp("web-signer")
    callers, token_file = run_local.write_callers_file(workdir)
    port = free_port()
    idp = run_local.demo_identity_provider("http://127.0.0.1")
    env = run_local.signer_env(
        *local_s3, port=port, callers_file=callers, identity_provider=idp
    ) | {"MAX_UPLOAD_BYTES": str(MAX_UPLOAD_BYTES)}
    process = run_local.start_signer(env, workdir / "avatar-signer.log")
    target = f"127.0.0.1:{port}"
    try:
        run_local.wait_serving(target, process)
        yield {"target": target, "token": token_file.read_text(), "idp": idp}
    finally:
        run_local.stop_process(process)


def _web(signer: dict[str, Any], **changes: Any) -> Background:
    settings = WebSettings(
        signer_target=signer["target"],
        signer_token=signer["token"],
        port=0,
        max_upload_bytes=MAX_UPLOAD_BYTES,
        identity_provider=signer["idp"],
        feed_users=(),
    )
    for name, value in changes.items():
        settings = _replace(settings, name, value)
    return Background(settings)


def _replace(settings: WebSettings, name: str, value: Any) -> WebSettings:
    from dataclasses import replace

    return replace(settings, **{name: value})


@pytest.fixture(scope="module")
def web(signer: dict[str, Any]) -> Iterator[Background]:
    app = _web(signer)
    yield app
    app.stop()


@pytest.fixture(scope="module")
def foreign_web(signer: dict[str, Any]) -> Iterator[Background]:
    """The same app on another port: an origin the CORS rules do not name."""
    app = _web(signer)
    yield app
    app.stop()


@pytest.fixture(scope="module")
def cors(local_s3: Stack, web: Background) -> Iterator[dict[str, Any]]:
    """The generated CORS rules for the app's origin, on the bucket for this module."""
    s3 = local_s3[0]
    rules = run_local.cors_rules(s3.bucket, [web.origin])
    run_local.apply_cors(s3, rules)
    yield rules
    run_local.apply_cors(s3, None)


@pytest.fixture
def page(browser: Any, cors: dict[str, Any]) -> Iterator[Any]:
    context = browser.new_context()
    context.set_default_timeout(WAIT_MS)
    tab = context.new_page()
    tab.errors = []  # type: ignore[attr-defined]
    tab.on("pageerror", lambda error: tab.errors.append(str(error)))
    yield tab
    context.close()


@pytest.fixture(scope="module")
def images(browser: Any, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A PNG and a JPEG from Chromium's own encoders, an SVG, and a file over the limit."""
    folder = tmp_path_factory.mktemp("images")
    context = browser.new_context()
    tab = context.new_page()
    files: dict[str, Path] = {}
    for name, mime in (("avatar.png", "image/png"), ("avatar.jpg", "image/jpeg")):
        data_url = tab.evaluate(_DRAW, [mime, name])
        path = folder / name
        path.write_bytes(base64.b64decode(data_url.split(",", 1)[1]))
        files[mime] = path
    context.close()
    svg = folder / "drawing.svg"
    svg.write_text('<svg xmlns="http://www.w3.org/2000/svg" width="8" height="8"/>')
    files["image/svg+xml"] = svg
    big = folder / "huge.png"
    big.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(MAX_UPLOAD_BYTES))
    files["too-big"] = big
    return files


_DRAW = """([mime, label]) => {
  const canvas = document.createElement("canvas");
  canvas.width = canvas.height = 96;
  const g = canvas.getContext("2d");
  const gradient = g.createLinearGradient(0, 0, 96, 96);
  gradient.addColorStop(0, mime === "image/png" ? "#2f6fdb" : "#e0632a");
  gradient.addColorStop(1, mime === "image/png" ? "#35c29a" : "#f2c84b");
  g.fillStyle = gradient;
  g.fillRect(0, 0, 96, 96);
  g.fillStyle = "#fff";
  g.font = "bold 22px sans-serif";
  g.fillText(mime === "image/png" ? "PNG" : "JPEG", 14, 56);
  return canvas.toDataURL(mime, 0.9);
}"""


# --------------------------------------------------------------------------- helpers


def _user(kind: str) -> str:
    return f"{kind}-{secrets.token_hex(3)}"


def _sign_in(page: Any, app: Background, user: str) -> None:
    page.goto(f"{app.origin}/signin")
    page.fill("#user", user)
    page.click("button[type=submit]")
    page.wait_for_url(f"{app.origin}/profile")
    page.wait_for_selector("body[data-ready=true]")


def _status(page: Any) -> tuple[str, str]:
    page.wait_for_selector("#status[data-state=done], #status[data-state=error]")
    return page.get_attribute("#status", "data-state"), page.text_content("#status")


def _shown(page: Any, selector: str) -> dict[str, Any]:
    result: dict[str, Any] = page.eval_on_selector(
        selector,
        "img => ({avatar: img.dataset.avatar, width: img.naturalWidth, src: img.currentSrc})",
    )
    return result


def _feed(page: Any, app: Background) -> dict[str, dict[str, Any]]:
    page.goto(f"{app.origin}/feed")
    page.wait_for_selector("body[data-ready=true]")
    items: list[dict[str, Any]] = page.eval_on_selector_all(
        "img[data-user]",
        "imgs => imgs.map(i => ({user: i.dataset.user, avatar: i.dataset.avatar,"
        " width: i.naturalWidth, src: i.currentSrc}))",
    )
    return {item["user"]: item for item in items}


def _requests_to(page: Any, *prefixes: str) -> list[str]:
    """Collects the URLs of requests to any of `prefixes` made from now on."""
    seen: list[str] = []
    page.on("request", lambda r: seen.append(r.url) if r.url.startswith(prefixes) else None)
    return seen


def _puts(page: Any) -> list[dict[str, str]]:
    """Collects the headers of every PUT the page sends from now on."""
    seen: list[dict[str, str]] = []
    page.on("request", lambda r: seen.append(r.headers) if r.method == "PUT" else None)
    return seen


def _s3_origin(page: Any) -> str:
    """The S3 origin, read off a download URL the app hands out."""
    url: str = page.evaluate("fetch('/api/avatar-url').then(r => r.json()).then(d => d.url)")
    scheme, rest = url.split("://", 1)
    return f"{scheme}://{rest.split('/', 1)[0]}/"


def _http_status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return int(response.status)
    except urllib.error.HTTPError as error:
        return int(error.code)


class _Network:
    """What Chromium reports of CORS (DevTools protocol): preflight statuses, CORS errors."""

    def __init__(self, page: Any) -> None:
        self.preflights: list[tuple[str, int]] = []  # (url, status)
        self.cors_errors: list[str] = []
        session = page.context.new_cdp_session(page)
        session.on("Network.responseReceived", self._response)
        session.on("Network.loadingFailed", self._failed)
        session.send("Network.enable")

    def _response(self, event: dict[str, Any]) -> None:
        if event.get("type") == "Preflight":
            self.preflights.append((event["response"]["url"], event["response"]["status"]))

    def _failed(self, event: dict[str, Any]) -> None:
        if "corsErrorStatus" in event:
            self.cors_errors.append(event["corsErrorStatus"]["corsError"])


def _assert_signed_headers_sent(puts: list[dict[str, str]], mime: str, file: Path) -> None:
    """One PUT, with the signed type and checksum (Content-Length is the browser's own)."""
    (headers,) = puts
    assert headers["content-type"] == mime
    digest = base64.b64encode(hashlib.sha256(file.read_bytes()).digest()).decode()
    assert headers["x-amz-checksum-sha256"] == digest


# --------------------------------------------------------------------------- tests


@pytest.mark.parametrize("mime", ["image/png", "image/jpeg"])
def test_profile_upload_shows_the_avatar_on_profile_and_feed(
    page: Any, web: Background, images: dict[str, Path], mime: str
) -> None:
    user = _user(mime.split("/")[1])
    _sign_in(page, web, user)
    assert _shown(page, "#avatar")["avatar"] == "default"
    puts = _puts(page)

    page.set_input_files("#file", str(images[mime]))

    assert _status(page) == ("done", "Your new avatar is up.")
    _assert_signed_headers_sent(puts, mime, images[mime])
    shown = _shown(page, "#avatar")
    assert shown["avatar"] == "own" and shown["width"] > 0
    assert "X-Amz-Signature=" in shown["src"]  # from S3, not the default picture
    on_feed = _feed(page, web)[user]
    assert on_feed["avatar"] == "own" and on_feed["width"] > 0
    assert page.errors == []


@pytest.mark.parametrize("mime", ["image/png", "image/jpeg"])
def test_uppy_upload_shows_the_avatar_on_its_page_and_the_feed(
    page: Any, web: Background, images: dict[str, Path], mime: str
) -> None:
    user = _user("uppy-" + mime.split("/")[1])
    _sign_in(page, web, user)
    page.goto(f"{web.origin}/uppy")
    page.wait_for_selector("body[data-ready=true]")
    puts = _puts(page)

    page.set_input_files(".uppy-Dashboard-input >> nth=0", str(images[mime]))

    assert _status(page) == ("done", "Your new avatar is up.")
    _assert_signed_headers_sent(puts, mime, images[mime])
    shown = _shown(page, "#avatar")
    assert shown["avatar"] == "own" and shown["width"] > 0
    on_feed = _feed(page, web)[user]
    assert on_feed["avatar"] == "own" and on_feed["width"] > 0
    assert page.errors == []


def test_a_page_on_an_origin_not_in_the_cors_rules_is_refused_by_the_preflight(
    page: Any, foreign_web: Background, images: dict[str, Path], cors: dict[str, Any]
) -> None:
    assert foreign_web.origin not in cors["CORSRules"][0]["AllowedOrigins"]
    user = _user("foreign")
    _sign_in(page, foreign_web, user)
    network = _Network(page)

    page.set_input_files("#file", str(images["image/png"]))

    state, message = _status(page)
    assert state == "error"
    assert "CORS" in message
    # S3 refused the preflight (SeaweedFS: 403 without Access-Control-Allow-Origin), so
    # Chromium never sent the PUT.
    assert [status for url, status in network.preflights if "/profiles/" in url] == [403]
    (error,) = network.cors_errors
    assert error in ("PreflightMissingAllowOriginHeader", "PreflightInvalidStatus")
    # Nothing was stored: the user still has no avatar.
    assert _shown(page, "#avatar")["avatar"] == "default"


def test_without_a_cors_configuration_seaweedfs_lets_every_origin_through(
    page: Any, local_s3: Stack, foreign_web: Background, images: dict[str, Path],
    cors: dict[str, Any],
) -> None:  # fmt: skip
    """Why the test above applies rules: with none, the foreign origin's upload works."""
    s3 = local_s3[0]
    run_local.apply_cors(s3, None)
    try:
        user = _user("no-rules")
        _sign_in(page, foreign_web, user)
        page.set_input_files("#file", str(images["image/png"]))
        assert _status(page) == ("done", "Your new avatar is up.")
    finally:
        run_local.apply_cors(s3, cors)


@pytest.mark.parametrize(
    ("kind", "expected"),
    [("too-big", "the limit is 1.0 MiB"), ("image/svg+xml", "SVG images are not accepted")],
)
def test_too_big_and_svg_are_refused_with_a_message_before_any_request(
    page: Any, web: Background, images: dict[str, Path], kind: str, expected: str
) -> None:
    _sign_in(page, web, _user("refused"))
    asked = _requests_to(page, f"{web.origin}/api/upload-url", _s3_origin(page))

    page.set_input_files("#file", str(images[kind]))

    state, message = _status(page)
    assert state == "error"
    assert expected in message
    assert asked == []


def test_a_put_with_another_type_than_signed_is_refused_by_s3(
    page: Any, web: Background, images: dict[str, Path]
) -> None:
    _sign_in(page, web, _user("retyped"))
    png = images["image/png"].read_bytes()
    outcome = page.evaluate(
        """async (b64) => {
          const m = await import("/static/avatar.js");
          const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0)).buffer;
          const config = await m.whoAmI();
          const signed = await m.askForUpload(bytes, config);  // signed for image/png
          const headers = { ...signed.headers };
          for (const name of Object.keys(headers)) {
            if (name.toLowerCase() === "content-type") headers[name] = "image/jpeg";
          }
          try {
            await m.putSigned({ ...signed, headers }, bytes);
            return "stored";
          } catch (error) {
            return error.message;
          }
        }""",
        base64.b64encode(png).decode(),
    )
    assert outcome.startswith("Storage refused the upload: 403"), outcome
    page.reload()
    page.wait_for_selector("body[data-ready=true]")
    assert _shown(page, "#avatar")["avatar"] == "default"


def test_a_user_without_an_avatar_shows_the_default_picture(page: Any, web: Background) -> None:
    user = _user("nobody")
    _sign_in(page, web, user)
    shown = _shown(page, "#avatar")
    assert shown["avatar"] == "default" and shown["width"] > 0
    assert shown["src"].endswith("/static/default-avatar.svg")
    on_feed = _feed(page, web)[user]
    assert on_feed["avatar"] == "default" and on_feed["width"] > 0
    # What the page saw: AWS S3 answers 403 to a reader without s3:ListBucket;
    # SeaweedFS answers 404 NoSuchKey.
    url = page.evaluate("fetch('/api/avatar-url').then(r => r.json()).then(d => d.url)")
    assert _http_status(url) in (403, 404)


def test_feed_screenshot(
    page: Any, web: Background, images: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> None:
    """The feed (this module's users), kept under the run's temporary folder to look at."""
    _sign_in(page, web, _user("shot"))
    page.set_input_files("#file", str(images["image/jpeg"]))
    assert _status(page)[0] == "done"
    feed = _feed(page, web)
    assert any(item["avatar"] == "own" for item in feed.values())
    assert all(item["width"] > 0 for item in feed.values())
    path = tmp_path_factory.getbasetemp() / "feed.png"
    page.screenshot(path=str(path), full_page=True)
    assert path.stat().st_size > 0
    print(f"feed screenshot: {path}")


# --------------------------------------------------------------------------- the app's API


def _http(opener: Any, url: str, body: Any = None, origin: str | None = None) -> tuple[int, Any]:
    headers = {"Content-Type": "application/json"}
    if origin is not None:
        headers["Origin"] = origin
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers=headers)
    try:
        with opener.open(request, timeout=10) as response:
            return int(response.status), json.loads(response.read())
    except urllib.error.HTTPError as error:
        with error:
            return int(error.code), json.loads(error.read())


def _signed_in(app: Background, user: str) -> Any:
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor())
    status, _ = _http(opener, f"{app.origin}/api/signin", {"user": user}, origin=app.origin)
    assert status == 200
    return opener


def test_the_users_token_is_what_lets_the_app_get_an_upload_url(
    signer: dict[str, Any], web: Background
) -> None:
    """End-user binding is on: the app forwards the token; without one the service refuses."""
    ask = {"content_type": "image/png", "content_length": 10}
    with_token = _signed_in(web, _user("bound"))
    status, answer = _http(with_token, f"{web.origin}/api/upload-url", ask, origin=web.origin)
    assert status == 200 and answer["method"] == "PUT"
    assert answer["headers"]["Content-Type"] == "image/png"

    tokenless = _web(signer, identity_provider=None)
    try:
        opener = _signed_in(tokenless, _user("unbound"))
        status, answer = _http(opener, f"{tokenless.origin}/api/upload-url", ask, tokenless.origin)
        assert (status, answer) == (403, {"error": "the avatar service refused this request"})
    finally:
        tokenless.stop()


def test_the_api_refuses_other_sites_and_anonymous_users(web: Background) -> None:
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor())
    signin = f"{web.origin}/api/signin"
    assert _http(opener, signin, {"user": "mallory"}, origin="http://127.0.0.1:1")[0] == 403
    assert _http(opener, signin, {"user": "mallory"}, origin=None)[0] == 403
    status, answer = _http(opener, f"{web.origin}/api/avatar-url")
    assert (status, answer) == (401, {"error": "sign in first"})
    status, answer = _http(opener, signin, {"user": "../bob"}, origin=web.origin)
    assert status == 400 and "user name" in answer["error"]


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"DEMO_IDP_JWT_SECRET": "x" * 40}, "DEMO_IDP_JWT_ISSUER"),
        ({"WEB_PORT": "http"}, "WEB_PORT"),
        ({"FEED_USERS": "alice,../bob"}, "FEED_USERS"),
        ({"ALLOWED_CONTENT_TYPES": "image/png,image/svg+xml"}, "ALLOWED_CONTENT_TYPES"),
        ({"AVATAR_SIGNER_TOKEN_FILE": "/nonexistent/token"}, "AVATAR_SIGNER_TOKEN_FILE"),
    ],
)
def test_a_bad_setting_is_one_line_naming_it(env: dict[str, str], named: str) -> None:
    from webapp.settings import SettingsError, load

    with pytest.raises(SettingsError) as raised:
        load(env)
    (line,) = str(raised.value).splitlines()
    assert line.startswith(f"{named}:")
    assert "x" * 40 not in line
