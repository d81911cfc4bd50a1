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
# The app, and with it telemetry (exporter threads, Sentry's sender, Redis pools), is
# built in each worker after the fork, never in the master.
preload_app = False


def post_fork(server, worker):
    if server.cfg.preload_app:
        # create_app would have run in the master: every worker would share its
        # telemetry's threads and sockets. Build it after the fork instead.
        raise RuntimeError("tracegate: run gunicorn without --preload")


def worker_exit(server, worker):
    import otel

    telemetry = otel.active()
    if telemetry is not None:
        telemetry.shutdown()
