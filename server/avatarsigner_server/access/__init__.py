"""Access control: who may call which RPC, how often, and over what transport.

    guard         the interceptor: authenticate, authorize, per-caller rate limit, count
    callers       the callers file (CALLERS_FILE), reloadable
    end_users     end-user JWTs bind upload URLs to their user (HS256 or a JWKS file)
    rate_limits   token buckets per caller and per user
    tls           TLS / mutual TLS server credentials, reloadable
    reloading     re-reads those files on SIGHUP or when they change
    control       builds them all from the access settings
"""
