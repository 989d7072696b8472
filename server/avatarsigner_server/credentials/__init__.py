"""Where each identity's credentials come from, and how they are kept fresh.

    sources     the source protocol; static keys
    key_files   a key pair from two files, re-read when they change
    roles       STS role sessions, renewed ahead of expiry
    watcher     one source per identity from the settings; refreshes them all
"""
