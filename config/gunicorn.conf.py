"""Run the gateway under your own gunicorn: `gunicorn -c config/gunicorn.conf.py`.

`tracegate serve` does the same with settings from the environment. Telemetry is set
up in each worker by `create_app` (no preload), and flushed when a worker exits.
"""

wsgi_app = "gateway.app:create_app()"
bind = "127.0.0.1:8080"
workers = 2
threads = 4
worker_class = "gthread"
graceful_timeout = 10


def worker_exit(server, worker):
    import otel

    telemetry = otel.active()
    if telemetry is not None:
        telemetry.shutdown()
