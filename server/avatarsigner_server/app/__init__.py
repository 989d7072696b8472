"""Running the service: build it, serve it, stop it.

    wiring   builds every part from Settings, in one place
    server   the grpc.aio server's lifecycle (start, health, reload, the drain at shutdown)
    gate     the first interceptor: sheds calls out of time, refuses calls while draining
    workers  `serve --workers N`: N server processes on one port under a supervisor
"""
