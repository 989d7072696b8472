"""avatar-signer: a gRPC service that hands out short-lived S3 presigned URLs for avatars.

Subpackages, one concern each; imports only point down this list (import-linter checks it,
see `[tool.importlinter]` in pyproject.toml):

    commands      `avatar-signer serve | check | policies`
    app           wiring (builds everything from Settings), the server's lifecycle, workers
    access        who may call which RPC: caller guard, callers file, end-user tokens, rate
                  limits, TLS, reloading of their files
    api           the AvatarSigner servicer, request validation, errors -> gRPC status
    telemetry     JSON logs, the audit trail, metrics, the call being served
    credentials   where each identity's keys come from (environment, files, STS roles),
                  kept fresh by a watcher
    settings      the environment -> a frozen Settings (one-line errors naming the variable)
    signing       the pure core: user id -> object key, SigV4, the two URL signers, clocks
    errors        the errors a caller can cause, as one family (no gRPC)

Names both sides of the wire must agree on (service name, RPC names, metadata keys) come
from the client distribution's `avatarsigner.contract`.
"""
