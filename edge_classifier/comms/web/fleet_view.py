"""The studio's view of the fleet: ``GET /api/fleet`` and the page's "Fleet" section
(``static/fleet.js``)::

    fleet_view.add_routes(app, transport)     # in make_app
    # GET /api/fleet -> {"enabled": true, "group": "shop", "mode": "share", "connected": true,
    #                    "devices": [{"device": "shelf-1", "online": true, "samples": 12,
    #                                 "this": true}, ...], "dropped": {"forged": 0, ...}}

The transport's ``fleet_view`` (set by the device when ``[fleet]`` is on) returns the latest
snapshot the loop thread made; nothing here touches the replica or the store.
"""

from __future__ import annotations

import json

from edge_classifier.comms.web.aio import web


def add_routes(app: web.Application, t) -> None:
    async def fleet(request: web.Request) -> web.Response:
        view = getattr(t, "fleet_view", None)
        payload = dict(view() or {}, enabled=True) if callable(view) else {"enabled": False}
        return web.json_response(payload, headers={"Cache-Control": "no-store"},
                                 dumps=lambda o: json.dumps(o, ensure_ascii=False))
    app.router.add_get("/api/fleet", fleet)
