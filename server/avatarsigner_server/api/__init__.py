"""The AvatarSigner API: request messages in, responses or statuses out.

    validation  request messages -> validated values, or every field violation at once
    servicer    the handlers: validate -> gate -> object key -> sign -> respond
    status      the error family -> gRPC status with google.rpc details, in one place
"""
