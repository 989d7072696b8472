"""A reference profile service that lets its users upload avatars through AvatarSigner.

`python -m webapp` (from examples/web) serves it with the settings in `settings.py`.
"""
