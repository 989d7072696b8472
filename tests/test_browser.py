"""The browser path in a real Chromium: the reference web app, CORS on a real S3, Uppy.

Set-up (module scope): the session's SeaweedFS with verified mode's three identities and
the CORS rule `avatar-signer policies --allowed-origin <the app's origin>` prints; the
service (verified uploads) with a callers file whose one caller is the app, and end-user
tokens on; the app of examples/web (its demo sign-in issues the user's token, which it
forwards); a second copy of the app on another port, an origin the rule does not name.
Chromium is Debian's, driven by Playwright, headless.

SeaweedFS answers every origin while the bucket has no CORS configuration, so the
foreign-origin test is what shows the rule is in force.
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
from dataclasses import replace
from pathlib import Path
from typing import Any

import leaks
import pytest
import seaweed_s3
from avatarsigner_server.commands import policies
from avatarsigner_server.signing.url_signers import OBJECT_HEADERS, UploadSigner
from conftest import verified_env
from guarded import caller, server_with_callers
from webapp.serving import Background
from webapp.settings import DemoIdentityProvider, WebSettings

pytestmark = pytest.mark.slow  # starts Chromium, the service and two web servers

CHROMIUM = os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium")
INSTALL_HINT = "apt-get install chromium chromium-driver (as root; .ci/run does it)"
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
#: What the app may call: everything its pages need, nothing else.
WEB_CALLER_RPCS = (
    "CreateUploadUrl",
    "ConfirmUpload",
    "DeleteAvatar",
    "CreateDownloadUrl",
    "BatchCreateDownloadUrls",
)
#: Signed headers a page sends that Chromium's preflight does not name (safelisted).
CORS_SAFELISTED = {"content-language"}
FAKE_IMAGE = b"<html><script>alert('not an avatar')</script></html>\n"
DONE = "Your new avatar is up"

VerifiedS3 = tuple[seaweed_s3.LocalS3, dict[str, seaweed_s3.Identity]]


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
def signer(
    verified_s3: VerifiedS3, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Any]]:
    """The service in verified mode: a callers file with the web app only, end-user
    tokens on (the app's demo sign-in issues them with this secret)."""
    workdir = tmp_path_factory.mktemp("web-signer")
    web_app = caller("profile-web", WEB_CALLER_RPCS)
    idp = DemoIdentityProvider(
        secret=secrets.token_urlsafe(48), issuer="http://127.0.0.1/demo-idp", audience="avatars"
    )
    leaks.remember(idp.secret)
    env = verified_env(*verified_s3) | {
        "END_USER_JWT_SECRET": idp.secret,
        "END_USER_JWT_ISSUER": idp.issuer,
        "END_USER_JWT_AUDIENCE": idp.audience,
        "MAX_UPLOAD_BYTES": str(MAX_UPLOAD_BYTES),
    }
    running = server_with_callers(workdir, [web_app], **env)
    try:
        yield {"target": running.target, "token": web_app.token, "idp": idp}
    finally:
        running.stop()


def _web(signer: dict[str, Any], **changes: Any) -> Background:
    settings = WebSettings(
        signer_target=signer["target"],
        signer_token=signer["token"],
        port=0,
        max_upload_bytes=MAX_UPLOAD_BYTES,
        identity_provider=signer["idp"],
        feed_users=(),
    )
    return Background(replace(settings, **changes))


@pytest.fixture(scope="module")
def web(signer: dict[str, Any]) -> Iterator[Background]:
    app = _web(signer)
    yield app
    app.stop()


@pytest.fixture(scope="module")
def foreign_web(signer: dict[str, Any]) -> Iterator[Background]:
    """The same app on another port: an origin the CORS rule does not name."""
    app = _web(signer)
    yield app
    app.stop()


@pytest.fixture(scope="module")
def cors(verified_s3: VerifiedS3, web: Background) -> Iterator[dict[str, Any]]:
    """The printed CORS rule for the app's origin, on the bucket for this module."""
    s3 = verified_s3[0]
    rules = policies.cors([web.origin])
    assert rules is not None
    s3.put_cors(rules)
    yield rules
    s3.put_cors(None)


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
    """A PNG and a JPEG from Chromium's own encoders, an SVG, a file over the limit, and
    a fake: HTML named .png."""
    folder = tmp_path_factory.mktemp("images")
    context = browser.new_context()
    tab = context.new_page()
    files: dict[str, Path] = {}
    for name, mime in (("avatar.png", "image/png"), ("avatar.jpg", "image/jpeg")):
        data_url = tab.evaluate(_DRAW, mime)
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
    fake = folder / "holiday.png"
    fake.write_bytes(FAKE_IMAGE)
    files["fake"] = fake
    return files


_DRAW = """(mime) => {
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


def _open_uppy(page: Any, app: Background) -> None:
    page.goto(f"{app.origin}/uppy")
    page.wait_for_selector("body[data-ready=true]")


def _choose(page: Any, file: Path, uppy: bool = False) -> None:
    selector = ".uppy-Dashboard-input >> nth=0" if uppy else "#file"
    page.set_input_files(selector, str(file))


def _status(page: Any) -> tuple[str, str, str]:
    """(state, text, reason) of the page's status line once it is done or an error."""
    page.wait_for_selector("#status[data-state=done], #status[data-state=error]")
    status: tuple[str, str, str] = page.eval_on_selector(
        "#status", "s => [s.dataset.state, s.textContent, s.dataset.reason]"
    )
    return status


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
    """What Chromium itself sent and was told (DevTools protocol): the headers of each PUT
    and of each CORS preflight, the statuses, and the CORS errors."""

    def __init__(self, page: Any) -> None:
        self.preflights: list[dict[str, Any]] = []  # {url, headers, status}
        self.puts: list[dict[str, Any]] = []  # {url, headers, status}
        self.cors_errors: list[str] = []
        self._by_id: dict[str, dict[str, Any]] = {}
        session = page.context.new_cdp_session(page)
        session.on("Network.requestWillBeSent", self._request)
        session.on("Network.requestWillBeSentExtraInfo", self._sent_headers)
        session.on("Network.responseReceived", self._response)
        session.on("Network.loadingFailed", self._failed)
        session.send("Network.enable")

    def _entry(self, request_id: str) -> dict[str, Any]:
        return self._by_id.setdefault(request_id, {"headers": {}, "status": None})

    def _request(self, event: dict[str, Any]) -> None:
        entry = self._entry(event["requestId"])
        entry["url"] = event["request"]["url"]
        if event["request"]["method"] == "PUT" and entry not in self.puts:
            self.puts.append(entry)
        if event.get("type") == "Preflight" and entry not in self.preflights:
            self.preflights.append(entry)

    def _sent_headers(self, event: dict[str, Any]) -> None:
        # The headers as they went on the wire, Content-Length included.
        headers = {name.lower(): value for name, value in event["headers"].items()}
        self._entry(event["requestId"])["headers"].update(headers)
        if "access-control-request-method" in headers:
            entry = self._entry(event["requestId"])
            if entry not in self.preflights:
                self.preflights.append(entry)

    def _response(self, event: dict[str, Any]) -> None:
        entry = self._entry(event["requestId"])
        entry.setdefault("url", event["response"]["url"])
        entry["status"] = event["response"]["status"]
        if event.get("type") == "Preflight" and entry not in self.preflights:
            self.preflights.append(entry)

    def _failed(self, event: dict[str, Any]) -> None:
        if "corsErrorStatus" in event:
            self.cors_errors.append(event["corsErrorStatus"]["corsError"])


def _checksum(file: Path) -> str:
    return base64.b64encode(hashlib.sha256(file.read_bytes()).digest()).decode()


def _assert_the_put_carried_exactly_the_signed_headers(
    network: _Network, mime: str, file: Path
) -> None:
    """One PUT with the signed type, checksum, If-None-Match and fixed object headers (the
    page set them) and the file's length (the browser set it), after a preflight naming the
    signed headers a page sets, which the CORS rule allows."""
    (put,) = network.puts
    assert put["status"] == 200
    sent = put["headers"]
    assert sent["content-type"] == mime
    assert sent["x-amz-checksum-sha256"] == _checksum(file)
    assert sent["if-none-match"] == "*"
    assert {name.lower(): value for name, value in OBJECT_HEADERS.items()}.items() <= sent.items()
    assert sent["content-length"] == str(file.stat().st_size)
    (preflight,) = [p for p in network.preflights if p.get("url") == put["url"]]
    assert preflight["status"] == 200
    asked = preflight["headers"]["access-control-request-headers"].split(",")
    # All but Content-Language: with a value such as "und" it is a CORS-safelisted request
    # header (Fetch standard), which a preflight does not name.
    assert sorted(asked) == sorted(set(UploadSigner.HEADERS_A_BROWSER_MAY_SET) - CORS_SAFELISTED)


# --------------------------------------------------------------------------- uploads


@pytest.mark.parametrize("mime", ["image/png", "image/jpeg"])
@pytest.mark.parametrize("uppy", [False, True], ids=["file-input", "uppy"])
def test_an_upload_is_confirmed_and_shown_on_its_page_and_the_feed(
    page: Any, web: Background, images: dict[str, Path], mime: str, uppy: bool
) -> None:
    user = _user(("uppy-" if uppy else "") + mime.split("/")[1])
    _sign_in(page, web, user)
    if uppy:
        _open_uppy(page, web)
    assert _shown(page, "#avatar")["avatar"] == "default"
    network = _Network(page)

    _choose(page, images[mime], uppy)

    state, message, _ = _status(page)
    assert (state, message[: len(DONE)]) == ("done", DONE), message
    # What ConfirmUpload verified: its width and height, and the type.
    assert f"96\N{MULTIPLICATION SIGN}96 {mime.split('/')[1].upper()}" in message
    _assert_the_put_carried_exactly_the_signed_headers(network, mime, images[mime])
    shown = _shown(page, "#avatar")
    assert shown["avatar"] == "own" and shown["width"] == 96
    assert f"/profiles/{user}/avatar?" in shown["src"]  # the published avatar, from S3
    on_feed = _feed(page, web)[user]
    assert on_feed["avatar"] == "own" and on_feed["width"] == 96
    assert page.errors == []


@pytest.mark.parametrize("uppy", [False, True], ids=["file-input", "uppy"])
def test_a_fake_image_is_stored_but_refused_at_confirm_and_never_shown(
    page: Any, web: Background, images: dict[str, Path], uppy: bool
) -> None:
    """HTML named .png: S3 checks type, length and checksum, not content, so the PUT
    succeeds; ConfirmUpload refuses it, the page says why, and no avatar appears."""
    user = _user("fake")
    _sign_in(page, web, user)
    if uppy:
        _open_uppy(page, web)
    network = _Network(page)

    _choose(page, images["fake"], uppy)

    state, message, reason = _status(page)
    assert (state, reason) == ("error", "NOT_AN_IMAGE")
    assert message == "The picture was refused: this file is not an image."
    (put,) = network.puts
    assert put["status"] == 200 and put["headers"]["content-type"] == "image/png"
    assert _shown(page, "#avatar")["avatar"] == "default"
    assert _feed(page, web)[user]["avatar"] == "default"


def test_a_page_on_an_origin_not_in_the_cors_rule_is_refused_by_the_preflight(
    page: Any, foreign_web: Background, images: dict[str, Path], cors: dict[str, Any]
) -> None:
    assert foreign_web.origin not in cors["CORSRules"][0]["AllowedOrigins"]
    user = _user("foreign")
    _sign_in(page, foreign_web, user)
    network = _Network(page)

    _choose(page, images["image/png"])

    state, message, _ = _status(page)
    assert state == "error"
    assert "CORS" in message
    # S3 refused the preflight (SeaweedFS: 403 without Access-Control-Allow-Origin), so
    # Chromium never sent the PUT.
    assert [p["status"] for p in network.preflights if "/uploads/" in p["url"]] == [403]
    assert [put["status"] for put in network.puts] == [None]
    (error,) = network.cors_errors
    assert error in ("PreflightMissingAllowOriginHeader", "PreflightInvalidStatus")
    assert _shown(page, "#avatar")["avatar"] == "default"


def test_without_a_cors_configuration_seaweedfs_lets_every_origin_through(
    page: Any, verified_s3: VerifiedS3, foreign_web: Background, images: dict[str, Path],
    cors: dict[str, Any],
) -> None:  # fmt: skip
    """Why the test above applies the rule: with none, the foreign origin's upload works."""
    s3 = verified_s3[0]
    s3.put_cors(None)
    try:
        _sign_in(page, foreign_web, _user("no-rules"))
        _choose(page, images["image/png"])
        assert _status(page)[0] == "done"
    finally:
        s3.put_cors(cors)


@pytest.mark.parametrize(
    ("kind", "expected"),
    [("too-big", "the limit is 1.0 MiB"), ("image/svg+xml", "SVG images are not accepted")],
)
@pytest.mark.parametrize("uppy", [False, True], ids=["file-input", "uppy"])
def test_too_big_and_svg_are_refused_with_a_message_before_any_request(
    page: Any, web: Background, images: dict[str, Path], kind: str, expected: str, uppy: bool
) -> None:
    _sign_in(page, web, _user("refused"))
    if uppy:
        _open_uppy(page, web)
    asked = _requests_to(page, f"{web.origin}/api/upload-url", _s3_origin(page))

    _choose(page, images[kind], uppy)

    state, message, _ = _status(page)
    assert state == "error"
    assert expected in message
    assert asked == []


_PUT_AGAIN_OR_RETYPED = """async ([b64, retype]) => {
  const m = await import("/static/avatar.js");
  const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0)).buffer;
  const config = await m.whoAmI();
  const signed = await m.askForUpload(bytes, config);  // signed for image/png
  const outcome = async (answer) => {
    try {
      await m.putSigned(answer, bytes);
      return "stored";
    } catch (error) {
      return error.message;
    }
  };
  if (!retype) return [await outcome(signed), await outcome(signed)];
  const headers = { ...signed.headers };
  for (const name of Object.keys(headers)) {
    if (name.toLowerCase() === "content-type") headers[name] = "image/jpeg";
  }
  return [await outcome({ ...signed, headers })];
}"""


def test_a_put_with_another_type_than_signed_is_refused_by_s3(
    page: Any, web: Background, images: dict[str, Path]
) -> None:
    _sign_in(page, web, _user("retyped"))
    png = base64.b64encode(images["image/png"].read_bytes()).decode()
    (outcome,) = page.evaluate(_PUT_AGAIN_OR_RETYPED, [png, True])
    assert outcome == "Storage refused the upload: 403 SignatureDoesNotMatch.", outcome


def test_an_upload_url_writes_once(page: Any, web: Background, images: dict[str, Path]) -> None:
    """If-None-Match: * reached S3 from the browser: a second PUT is 412."""
    _sign_in(page, web, _user("twice"))
    png = base64.b64encode(images["image/png"].read_bytes()).decode()
    first, second = page.evaluate(_PUT_AGAIN_OR_RETYPED, [png, False])
    assert first == "stored"
    assert second == "Storage refused the upload: 412 PreconditionFailed.", second


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


def test_remove_photo_brings_back_the_default_picture_everywhere(
    page: Any, web: Background, images: dict[str, Path]
) -> None:
    user = _user("removed")
    _sign_in(page, web, user)
    _choose(page, images["image/png"])
    assert _status(page)[0] == "done"
    assert _shown(page, "#avatar")["avatar"] == "own"
    assert _feed(page, web)[user]["avatar"] == "own"
    _sign_in(page, web, user)  # a fresh page: its status line is idle again
    page.click("#remove")
    state, message, _ = _status(page)
    assert (state, message.split(".")[0]) == ("done", "Your photo is removed"), message
    assert _shown(page, "#avatar")["avatar"] == "default"
    assert _feed(page, web)[user]["avatar"] == "default"  # the feed shows the default too


def test_feed_screenshot(
    page: Any, web: Background, images: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> None:
    """The feed of this module's users, kept under the run's temporary folder to look at."""
    _sign_in(page, web, _user("shot"))
    _choose(page, images["image/jpeg"])
    assert _status(page)[0] == "done"
    feed = _feed(page, web)
    assert any(item["avatar"] == "own" for item in feed.values())
    assert any(item["avatar"] == "default" for item in feed.values())
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
    assert status == 200 and answer["method"] == "PUT" and answer["confirm"] is True
    assert answer["headers"]["Content-Type"] == "image/png"
    assert answer["headers"]["If-None-Match"] == "*"

    tokenless = _web(signer, identity_provider=None)
    try:
        opener = _signed_in(tokenless, _user("unbound"))
        status, answer = _http(opener, f"{tokenless.origin}/api/upload-url", ask, tokenless.origin)
        assert (status, answer) == (403, {"error": "the avatar service refused this request"})
    finally:
        tokenless.stop()


def test_confirming_an_upload_that_never_arrived_says_so(web: Background) -> None:
    opener = _signed_in(web, _user("early"))
    ask = {"content_type": "image/png", "content_length": 10}
    _, answer = _http(opener, f"{web.origin}/api/upload-url", ask, origin=web.origin)
    confirm = {"upload_id": answer["upload_id"]}
    status, refused = _http(opener, f"{web.origin}/api/confirm", confirm, origin=web.origin)
    assert (status, refused["reason"]) == (422, "NOT_UPLOADED")
    assert refused["error"].startswith("The picture was refused: the upload did not arrive")
    status, refused = _http(opener, f"{web.origin}/api/confirm", {}, origin=web.origin)
    assert status == 400 and "upload_id" in refused["error"]


def test_the_api_refuses_other_sites_and_anonymous_users(web: Background) -> None:
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor())
    signin = f"{web.origin}/api/signin"
    assert _http(opener, signin, {"user": "mallory"}, origin="http://127.0.0.1:1")[0] == 403
    assert _http(opener, signin, {"user": "mallory"}, origin=None)[0] == 403
    status, answer = _http(opener, f"{web.origin}/api/avatar-url")
    assert (status, answer) == (401, {"error": "sign in first"})
    status, answer = _http(opener, signin, {"user": "../bob"}, origin=web.origin)
    assert status == 400 and "user name" in answer["error"]
