"""The pure signing core: no gRPC, no network, no files, no clock read inside.

    object_keys  user id -> S3 object key (the only place that rule lives)
    sigv4        AWS Signature Version 4 query presigning, as small pure functions
    url_signers  UploadSigner (PUT only) and DownloadSigner (GET only), one identity each
    key_pairs    the AWS key pair a signer signs with, and where it asks for one
    clock        the real clocks, passed in wherever time matters
"""
