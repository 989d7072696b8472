"""avatar-signer: a gRPC service that hands out short-lived S3 presigned URLs for avatars.

Modules, one concern each, data flowing one way:
    config      environment -> frozen Settings (one-line errors naming the variable)
    keys        user id -> object key (the only place that rule lives)
    sigv4       the AWS Signature V4 query presigner: pure functions, clock passed in
    credentials where each identity's credentials come from (keys, key files, role),
                kept fresh by a watcher; URLs never outlive them
    signers     UploadSigner (PUT only, uploader creds) and DownloadSigner (GET only, reader creds)
    validation  request messages -> validated values, or every field violation at once
    errors      the errors a caller can cause, mapped to gRPC status in one place
    observability  JSON logging (never a URL, signature, secret or token)
    callers     the callers file (CALLERS_FILE): who may call which RPC, reloadable
    calls       the call being served: request id, caller, RPC (a context variable)
    auth        the interceptor: authenticate, authorize, per-caller rate limit, count
    enduser     end-user JWTs bind upload URLs to their user (HS256 or a JWKS file)
    ratelimit   token buckets per caller and per user
    tls         TLS / mutual TLS server credentials, re-read on SIGHUP
    metrics     Prometheus counters, histograms and the credential-expiry gauge
    audit       one line per decision (each signed URL, each refusal), never the URL
    security    wires callers, TLS, end-user tokens, limits, metrics, audit from Settings
    service     the AvatarSigner servicer: validate -> check -> key -> sign -> respond
    app         wiring and lifecycle (health, reflection, graceful shutdown)
    workers     `serve --workers N`: N server processes on one port (SO_REUSEPORT), one
                supervisor that forwards signals and waits for them to drain
    check       `avatar-signer check`: the least-privilege audit against the real bucket
    policies    `avatar-signer policies`: the IAM and bucket documents as JSON
    cli         `avatar-signer serve | check | policies`
"""
