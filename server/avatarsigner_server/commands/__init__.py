"""The `avatar-signer` command: `serve`, `check`, `policies`.

    cli       the command line (serve runs the app; one-line errors, exit 2)
    check     proves the least privilege against the real bucket
    policies  prints the IAM and bucket documents the model rests on
"""
