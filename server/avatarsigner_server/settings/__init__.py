"""Settings: the environment, validated once at start-up into a frozen `Settings`.

    env          typed readers; SettingsError (one line naming the variable)
    identities   each S3 identity's one credential source, and the key-pair rules
    bucket       region, bucket, endpoint, key prefix
    limits       URL lifetimes, allowed types, largest upload, reuse window
    network      host, ports, workers
    access       TLS, callers file, end-user tokens, rate limits (shapes only)
    cloudfront   the distribution, its signing key's file and id, viewer cookies
    load         composes them into Settings
"""

from __future__ import annotations

from .bucket import is_valid_bucket, is_valid_region
from .env import SettingsError
from .limits import TtlRule
from .load import Settings, load
from .network import host_port

__all__ = [
    "Settings",
    "SettingsError",
    "TtlRule",
    "host_port",
    "is_valid_bucket",
    "is_valid_region",
    "load",
]
