"""avatar-signer: a gRPC service that hands out short-lived S3 presigned URLs for avatars.

Modules, one concern each, data flowing one way:
    config      environment -> frozen Settings (one-line errors naming the variable)
    keys        user id -> object key (the only place that rule lives)
    sigv4       the AWS Signature V4 query presigner: pure functions, clock passed in
    credentials where each identity's credentials come from
    signers     UploadSigner (PUT only, uploader creds) and DownloadSigner (GET only, reader creds)
    validation  request messages -> validated values, or every field violation at once
    errors      the errors a caller can cause, mapped to gRPC status in one place
    observability  JSON logging; one line per signed URL, never the URL
    service     the AvatarSigner servicer: validate -> key -> sign -> respond
    app         wiring and lifecycle (health, reflection, graceful shutdown)
    cli         `avatar-signer serve | check | policies`
"""
