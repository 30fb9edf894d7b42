"""photo gateway: Flask app factory. ``create_app(config)`` loads the index and wires the routes.

Nothing heavy is imported at package import: ``python -m gateway`` imports this package before its
``__main__`` sets ``PROMETHEUS_MULTIPROC_DIR``, and prometheus-client fixes its storage when first imported.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from flask import Flask

    from gateway.config import Config
    from modelserver.client import ModelClient


def create_app(config: Config | None = None, client: ModelClient | None = None) -> Flask:
    """The WSGI app. ``client`` is for unit tests; by default it talks to ``config.torchserve_url``."""
    from flask import Flask

    from gateway import multipart, request_id
    from gateway.config import Config
    from gateway.metrics import instrument
    from gateway.routes import bp
    from gateway.service import SearchService
    from modelserver.client import make_client

    config = config or Config.from_env()
    multipart.install()  # uploads read without compiling two patterns each (gateway/multipart.py)
    app = Flask(__name__)
    # Werkzeug answers 413 past this size before the body is read.
    app.config["MAX_CONTENT_LENGTH"] = int(config.max_upload_mb * 1024 * 1024) + 64 * 1024
    app.config["MAX_FORM_MEMORY_SIZE"] = app.config["MAX_CONTENT_LENGTH"]
    client = client or make_client(config.torchserve_url, config.torchserve_model, config.torchserve_timeout,
                                   config.torchserve_token, config.torchserve_key_file)
    svc = SearchService(config, client)
    svc.indexes.load()
    if config.index_poll_on_request:  # AWS Lambda: a background thread would be frozen between invocations
        app.before_request(svc.indexes.refresh_if_due)
    else:
        svc.indexes.start_polling()
    app.extensions["photo"] = svc
    request_id.install(app)
    instrument(app)
    app.register_blueprint(bp)
    return app
