"""What the service tells its operators: logs, the audit trail, metrics.

    logs          JSON lines on stderr, written by a thread from a bounded buffer (never a
                  URL, signature, secret or token)
    call_context  the call being served (request id, caller, RPC), a context variable
    audit         one line per decision: each upload URL, each download call, each refusal
    metrics       Prometheus counters and histograms, served on METRICS_PORT
"""
