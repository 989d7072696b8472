"""The profile service: pages, a demo sign-in, and the JSON API the pages call.

The browser never talks to AvatarSigner and never names a user: the app takes the user
from the session, asks AvatarSigner over gRPC as a configured caller (bearer token from
the callers file, the end user's own token forwarded when end-user binding is on), and
hands the page the URL, the method and the headers to send. The bytes go from the
browser straight to S3.

    GET  /signin /profile /feed /uppy    pages (static HTML + ES modules, no build step)
    POST /api/signin {"user": "alice"}   demo sign-in: a signed cookie session
    POST /api/signout
    GET  /api/me                         who is signed in, and what the pages may accept
    POST /api/upload-url {"content_type", "content_length", "checksum_sha256"}
    POST /api/confirm {"upload_id"}      verified uploads: ConfirmUpload, after the PUT
    GET  /api/avatar-url                 a download URL for the signed-in user
    GET  /api/feed                       download URLs for the feed, one batch call; with
                                         FEED_AVATARS=cookies, plain CloudFront URLs and
                                         the viewer cookies (Set-Cookie) that grant them
"""

from __future__ import annotations

import base64
import binascii
import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import grpc
from avatarsigner import AsyncAvatarSignerClient, AvatarSignerError
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.sessions import SessionMiddleware
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Receive, Scope, Send

from .accounts import Directory, issue_token, token_expired
from .settings import USER_ID, WebSettings

log = logging.getLogger("profile_web")

HERE = Path(__file__).resolve().parent.parent
STATIC = HERE / "static"
#: The npm `uppy` bundle (`npm ci` in examples/web); only its dist/ folder is served.
UPPY_DIST = HERE / "node_modules" / "uppy" / "dist"

SESSION_COOKIE = "profile_session"
SESSION_HOURS = 8
# API answers carry presigned URLs (bearer credentials): never stored by any cache.
NO_STORE = {"Cache-Control": "no-store"}


#: An upload id as the service mints it: opaque, URL-safe (the service checks the rest).
UPLOAD_ID = re.compile(r"[A-Za-z0-9_-]{1,128}")

# What the page tells a person when ConfirmUpload refuses an upload, by the reason the
# service gives (google.rpc.ErrorInfo). The reason itself goes along for programs.
REFUSALS = {
    "NOT_AN_IMAGE": "this file is not an image",
    "TYPE_MISMATCH": "the file is another kind of image than it claims to be",
    "UNSUPPORTED_FORMAT": "this kind of image is not accepted (JPEG, PNG or WebP only)",
    "TRUNCATED": "the image is incomplete",
    "CORRUPT": "the image is damaged",
    "TOO_MANY_PIXELS": "the picture has too many pixels",
    "ANIMATED": "animated pictures are not accepted",
    "TOO_MANY_FRAMES": "the picture has too many frames",
    "TOO_COMPLEX": "the image file is too complex",
    "TOO_LARGE": "the file is too large",
    "NOT_UPLOADED": "the upload did not arrive, or has expired; try again",
    "SIZE_MISMATCH": "the upload was not the size announced; try again",
    "CHECKSUM_MISMATCH": "the upload was not the bytes announced; try again",
}


class ApiError(Exception):
    def __init__(self, status: int, message: str, reason: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.reason = reason


def create_app(settings: WebSettings, signer: AsyncAvatarSignerClient | None = None) -> Starlette:
    """The ASGI app. `signer` defaults to a client built from `settings`."""
    directory = Directory(settings.feed_users)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        client = signer or _signer_client(settings)
        app.state.signer = client
        try:
            yield
        finally:
            if signer is None:
                await client.close()

    def current_user(request: Request) -> str:
        user = request.session.get("user")
        if not isinstance(user, str):
            raise ApiError(401, "sign in first")
        return user

    def end_user_token(request: Request) -> str | None:
        """The signed-in user's own token, forwarded to AvatarSigner (binding on)."""
        if settings.identity_provider is None:
            return None
        token = request.session.get("token")
        if not isinstance(token, str) or token_expired(token):
            raise ApiError(401, "your sign-in has expired; sign in again")
        return token

    def the_signer(request: Request) -> AsyncAvatarSignerClient:
        client: AsyncAvatarSignerClient = request.app.state.signer
        return client

    # -- pages ----------------------------------------------------------------------

    async def home(request: Request) -> Response:
        signed_in = isinstance(request.session.get("user"), str)
        return RedirectResponse("/profile" if signed_in else "/signin", status_code=303)

    def page(name: str, signed_in_only: bool = False) -> Callable[[Request], Awaitable[Response]]:
        async def serve(request: Request) -> Response:
            if signed_in_only and not isinstance(request.session.get("user"), str):
                return RedirectResponse("/signin", status_code=303)
            return FileResponse(STATIC / name, headers={"Cache-Control": "no-cache"})

        return serve

    async def uppy_page(request: Request) -> Response:
        if not (UPPY_DIST / "uppy.min.mjs").is_file():
            return Response(
                "The Uppy page needs the npm packages: run `npm ci` in examples/web"
                " (make install does).\n",
                status_code=503,
                media_type="text/plain",
            )
        return await page("uppy.html", signed_in_only=True)(request)

    # -- API ------------------------------------------------------------------------

    async def sign_in(request: Request) -> Response:
        body = await _json(request)
        user = body.get("user")
        if not isinstance(user, str) or not USER_ID.fullmatch(user):
            raise ApiError(
                400,
                "a user name is 1-128 of A-Z a-z 0-9 . _ - and starts with a letter or digit",
            )
        request.session.clear()
        request.session["user"] = user
        if settings.identity_provider is not None:
            request.session["token"] = issue_token(settings.identity_provider, user)
        directory.seen(user)
        return JSONResponse({"user": user})

    async def sign_out(request: Request) -> Response:
        request.session.clear()
        return JSONResponse({})

    async def me(request: Request) -> Response:
        return JSONResponse(
            {
                "user": current_user(request),
                "allowed_types": list(settings.allowed_types),
                "max_upload_bytes": settings.max_upload_bytes,
                "end_user_binding": settings.end_user_binding,
            }
        )

    async def upload_url(request: Request) -> Response:
        user = current_user(request)
        body = await _json(request)
        content_type = body.get("content_type")
        length = body.get("content_length")
        checksum = body.get("checksum_sha256")
        if content_type not in settings.allowed_types:
            allowed = ", ".join(settings.allowed_types)
            raise ApiError(400, f"content_type: must be one of {allowed}")
        if isinstance(length, bool) or not isinstance(length, int) or length < 1:
            raise ApiError(400, "content_length: must be a positive whole number of bytes")
        if length > settings.max_upload_bytes:
            raise ApiError(400, f"content_length: at most {settings.max_upload_bytes} bytes")
        if checksum is not None and not _is_sha256_base64(checksum):
            raise ApiError(400, "checksum_sha256: must be the base64 of 32 bytes")
        token = end_user_token(request)
        upload = await _call(
            the_signer(request).create_upload_url(
                user, content_type, length, checksum_sha256=checksum, end_user_token=token
            )
        )
        return JSONResponse(
            {
                "method": upload.method,
                "url": upload.url,
                "headers": upload.headers,
                "expires_at": upload.expires_at.isoformat(),
                "key": upload.key,
                # Verified uploads: the page confirms with it once the PUT succeeded.
                # Empty when the service runs direct uploads (no confirm step).
                "upload_id": upload.upload_id,
                "confirm": bool(upload.upload_id),
            },
            headers=NO_STORE,
        )

    async def confirm(request: Request) -> Response:
        user = current_user(request)
        body = await _json(request)
        upload_id = body.get("upload_id")
        if not isinstance(upload_id, str) or not UPLOAD_ID.fullmatch(upload_id):
            raise ApiError(400, "upload_id: required, as the upload answer gave it")
        # The user comes from the session, so nobody confirms another user's upload;
        # the service checks that the upload_id was minted for this user as well.
        result = await _call(the_signer(request).confirm_upload(user, upload_id))
        directory.confirmed(user, result.version)
        return JSONResponse(
            {
                "version": result.version,
                "content_type": result.content_type,
                "width": result.width,
                "height": result.height,
                "metadata_removed": list(result.metadata_removed),
            },
            headers=NO_STORE,
        )

    async def remove(request: Request) -> Response:
        """The "Remove photo" button: DeleteAvatar for the signed-in user, with their own token."""
        user = current_user(request)
        done = await _call(the_signer(request).delete_avatar(user, end_user_token(request)))
        directory.removed(user)
        return JSONResponse(
            {
                "deleted": done.deleted,
                "cached_copies_expire_within_seconds": int(
                    done.cached_copies_expire_within.total_seconds()
                ),
            },
            headers=NO_STORE,
        )

    async def avatar_url(request: Request) -> Response:
        user = current_user(request)
        download = await _call(the_signer(request).create_download_url(user))
        return JSONResponse(
            {"user_id": user, "url": download.url, "expires_at": download.expires_at.isoformat()},
            headers=NO_STORE,
        )

    async def feed(request: Request) -> Response:
        users = directory.feed()
        if not users:
            return JSONResponse({"avatars": []}, headers=NO_STORE)
        if settings.feed_avatars == "cookies":
            return await feed_under_cookies(request, users)
        downloads = await _call(the_signer(request).batch_create_download_urls(users))
        return JSONResponse(
            {
                "avatars": [
                    {
                        "user_id": item.user_id,
                        "url": item.url,
                        "expires_at": item.expires_at.isoformat(),
                    }
                    for item in downloads
                ]
            },
            headers=NO_STORE,
        )

    async def feed_under_cookies(request: Request, users: list[str]) -> Response:
        """Plain avatar URLs, and the cookies that let this browser fetch them through
        CloudFront: one signature for the whole feed (HttpOnly: the page never sees them)."""
        granted = await _call(the_signer(request).create_viewer_cookies())
        expires_at = granted.expires_at.isoformat()
        response = JSONResponse(
            {
                "avatars": [
                    {"user_id": user, "url": granted.url_for(user), "expires_at": expires_at}
                    for user in users
                ]
            },
            headers=NO_STORE,
        )
        for header in granted.set_cookie:
            response.headers.append("set-cookie", header)
        return response

    routes = [
        Route("/", home),
        Route("/signin", page("signin.html")),
        Route("/profile", page("profile.html", signed_in_only=True)),
        Route("/feed", page("feed.html")),
        Route("/uppy", uppy_page),
        Route("/api/signin", _api(sign_in), methods=["POST"]),
        Route("/api/signout", _api(sign_out), methods=["POST"]),
        Route("/api/me", _api(me)),
        Route("/api/upload-url", _api(upload_url), methods=["POST"]),
        Route("/api/confirm", _api(confirm), methods=["POST"]),
        Route("/api/remove", _api(remove), methods=["POST"]),
        Route("/api/avatar-url", _api(avatar_url)),
        Route("/api/feed", _api(feed)),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]
    if UPPY_DIST.is_dir():
        routes.append(Mount("/vendor/uppy", StaticFiles(directory=UPPY_DIST), name="uppy"))
    return Starlette(
        routes=routes,
        lifespan=lifespan,
        middleware=[
            Middleware(SameOriginWrites),
            Middleware(
                SessionMiddleware,
                secret_key=settings.session_secret,
                session_cookie=SESSION_COOKIE,
                max_age=SESSION_HOURS * 3600,
                same_site="lax",
                https_only=False,  # set True behind HTTPS
            ),
            Middleware(SecurityHeaders),
        ],
    )


def _signer_client(settings: WebSettings) -> AsyncAvatarSignerClient:
    metadata = (
        {"authorization": f"Bearer {settings.signer_token}"} if settings.signer_token else None
    )
    credentials = None
    if settings.signer_ca_file is not None:
        credentials = grpc.ssl_channel_credentials(settings.signer_ca_file.read_bytes())
    return AsyncAvatarSignerClient(
        settings.signer_target, metadata=metadata, channel_credentials=credentials
    )


def _api(
    handler: Callable[[Request], Awaitable[Response]],
) -> Callable[[Request], Awaitable[Response]]:
    """JSON errors for ApiError: {"error": "..."} with its status."""

    async def wrapped(request: Request) -> Response:
        try:
            return await handler(request)
        except ApiError as error:
            body = {"error": error.message}
            if error.reason:
                body["reason"] = error.reason
            return JSONResponse(body, status_code=error.status, headers=NO_STORE)

    return wrapped


async def _json(request: Request) -> dict[str, Any]:
    if request.headers.get("content-type", "").split(";")[0].strip() != "application/json":
        raise ApiError(415, "send application/json")
    try:
        body = await request.json()
    except ValueError:
        raise ApiError(400, "the body is not JSON") from None
    if not isinstance(body, dict):
        raise ApiError(400, "the body must be a JSON object")
    return body


# What the page may be told, by gRPC status; never the service's own words for auth
# failures of this app (they are the operator's business, and are logged).
_STATUS = {
    "INVALID_ARGUMENT": 400,
    "RESOURCE_EXHAUSTED": 429,
    "FAILED_PRECONDITION": 409,
    "NOT_FOUND": 404,
    "UNAVAILABLE": 503,
    "DEADLINE_EXCEEDED": 503,
}


async def _call(pending: Awaitable[Any]) -> Any:
    try:
        return await pending
    except AvatarSignerError as error:
        code = error.code.name
        # No URL, no token: only the code and the reason.
        log.warning("AvatarSigner refused: %s %s", code, error.reason or "")
        if code == "INVALID_ARGUMENT":
            raise ApiError(400, str(error).split(": ", 1)[-1]) from None
        if code == "RESOURCE_EXHAUSTED":
            raise ApiError(429, "too many uploads for now; try again later") from None
        if code in ("UNAUTHENTICATED", "PERMISSION_DENIED"):
            raise ApiError(403, "the avatar service refused this request") from None
        if code == "FAILED_PRECONDITION" and error.reason in REFUSALS:
            # ConfirmUpload's verdict on the picture: the person can act on it.
            message = f"The picture was refused: {REFUSALS[error.reason]}."
            raise ApiError(422, message, error.reason) from None
        status = _STATUS.get(code, 502)
        raise ApiError(status, f"the avatar service answered {code}") from None


def _is_sha256_base64(value: object) -> bool:
    if not isinstance(value, str) or len(value) != 44:
        return False
    try:
        return len(base64.b64decode(value, validate=True)) == 32
    except (binascii.Error, ValueError):
        return False


class SameOriginWrites:
    """Refuse a state-changing request whose Origin is not this site (CSRF)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] not in ("GET", "HEAD", "OPTIONS"):
            request = Request(scope)
            own = f"{request.url.scheme}://{request.url.netloc}"
            if request.headers.get("origin") != own:
                response = JSONResponse({"error": "cross-site request refused"}, status_code=403)
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


class SecurityHeaders:
    """nosniff and no Referer beyond this site on every response."""

    HEADERS = (
        (b"x-content-type-options", b"nosniff"),
        (b"referrer-policy", b"same-origin"),
        (b"x-frame-options", b"DENY"),
    )

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def with_headers(message: Any) -> None:
            if message["type"] == "http.response.start":
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], *self.HEADERS]
            await send(message)

        await self.app(scope, receive, with_headers)
