"""``/v1/forecasts?segment=…`` (a segment's latest forecasts) and ``/v1/forecasts/score``.

The score is how the 15- and 30-minute forecasts (``services/warning/forecast.py``) and
persistence ("the same as now") have done against the speeds that came true since this replica
started. Times are UTC.
"""

from __future__ import annotations

from aiohttp import web

from services.warning.forecast import Forecaster
from shared.codec import dumps
from shared.errors import BadRequest

FORECASTER = web.AppKey("warning_forecaster", Forecaster)


def _json(data: object) -> web.Response:
    return web.Response(body=dumps(data), content_type="application/json")


async def _forecasts(request: web.Request) -> web.Response:
    segment_id = request.query.get("segment", "")
    if not segment_id:
        raise BadRequest("segment is required: segment=<segment_id>")
    items = request.app[FORECASTER].list_forecasts(segment_id)
    return _json({"segment_id": segment_id, "forecasts": items, "count": len(items),
                  "time_zone": "UTC"})


async def _score(request: web.Request) -> web.Response:
    return _json(request.app[FORECASTER].score_json())


def add_forecast_routes(app: web.Application, forecaster: Forecaster) -> None:
    """Register ``/v1/forecasts`` and ``/v1/forecasts/score``."""
    app[FORECASTER] = forecaster
    app.router.add_get("/v1/forecasts", _forecasts)
    app.router.add_get("/v1/forecasts/score", _score)
