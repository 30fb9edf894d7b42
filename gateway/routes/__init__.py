"""HTTP routes, one module per audience: the shopper's page (page.py), the JSON API (api.py), health checks
(health.py); what they share (common.py) and every failure's answer (errors.py). Routes parse and render
only: what to search and how is the service's (gateway/service.py)."""

from gateway.routes import api, errors, health, page  # noqa: F401 - each registers its routes on bp
from gateway.routes.common import bp
from gateway.routes.errors import SEARCH_DOWN

__all__ = ["SEARCH_DOWN", "bp"]
