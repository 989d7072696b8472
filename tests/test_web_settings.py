"""The reference web app's settings (examples/web): a bad one is one line naming it."""

from __future__ import annotations

import pytest
from webapp.settings import SettingsError, load


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"DEMO_IDP_JWT_SECRET": "x" * 40}, "DEMO_IDP_JWT_ISSUER"),
        ({"WEB_PORT": "http"}, "WEB_PORT"),
        ({"FEED_USERS": "alice,../bob"}, "FEED_USERS"),
        ({"ALLOWED_CONTENT_TYPES": "image/png,image/svg+xml"}, "ALLOWED_CONTENT_TYPES"),
        ({"AVATAR_SIGNER_TOKEN_FILE": "/nonexistent/token"}, "AVATAR_SIGNER_TOKEN_FILE"),
        ({"FEED_AVATARS": "signed"}, "FEED_AVATARS"),
    ],
)
def test_a_bad_setting_is_one_line_naming_it(env: dict[str, str], named: str) -> None:
    with pytest.raises(SettingsError) as raised:
        load(env)
    (line,) = str(raised.value).splitlines()
    assert line.startswith(f"{named}:")
    assert "x" * 40 not in line
