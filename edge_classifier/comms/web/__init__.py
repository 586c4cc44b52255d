"""The web studio: teach, watch and test the device from a browser, served by the device.

One more transport on the device's bus (:class:`WebTransport`), an aiohttp server on its own
thread. The loop stays the only thing that runs the model: every action the page takes is an
event, applied between frames like a button press (:mod:`~.studio`)::

    web = WebTransport(config, device.post, store=store, inbox=state.open_inbox(50),
                       frame=lambda: device.current_frame)
    bus.add(web).start()            # "web studio on http://127.0.0.1:8080/"

Modules: :mod:`~.transport` (the publisher interface, the server thread), :mod:`~.app` (the
page, the live streams, the guard), :mod:`~.api` (the JSON API), :mod:`~.security` (host,
origin and password checks), :mod:`~.uploads` (bounded uploads), :mod:`~.studio` (the
events done on the loop's thread), :mod:`~.insight` (the confusion matrix),
:mod:`~.camera` (the browser's camera as a frame source), :mod:`~.aio` (aiohttp, imported on
first use: importing this package, as the device loop does, loads no aiohttp while
``[web] listen`` is empty); ``static/`` holds the page: plain HTML, CSS and JavaScript,
nothing from elsewhere.
"""

from edge_classifier.comms.web.camera import BrowserSource  # noqa: F401
from edge_classifier.comms.web.studio import (  # noqa: F401
    ImportImages, ListExport, PredictImage, ReadInsight, ReadStats, Studio, describe)
from edge_classifier.comms.web.transport import WebTransport  # noqa: F401
