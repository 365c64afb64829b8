"""The state room: what the daemon keeps on disk between runs, each file written atomically and checked on load.

:mod:`.catalogue` (the SQLite record of what was received, learned, decided and written), :mod:`.store`
(checksummed array bundles), :mod:`.model_store` (the fitted paired model), :mod:`.net_store` (the session
network, its ONNX export, the session's pairs and ``best.json``), :mod:`.provenance` (who made an output, from
what) and :mod:`.model_domain` (the domain a model was fitted in: pixel size, pixel type, detector).

Imports only the daemon's foundation, the image room's result types and :mod:`refscope.models`.
"""
