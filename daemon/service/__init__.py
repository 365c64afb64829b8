"""The service room: ``refscope daemon``, the service beside the microscope, assembled from the rooms below it.

:mod:`.daemon` holds :class:`~refscope.daemon.service.daemon.Daemon` (start, run, stop), which assembles the others,
each given what it uses: :mod:`.tally` the books (counts, errors, latencies, events); :mod:`.frame_path` the ingest
and serve loops (workers: record, classify, route; enhance, write, stream, observe); :mod:`.stream_output` the PUB
stream of raw, enhanced and confidence frames; :mod:`.commands` the operator's commands; :mod:`.control_server` the
control endpoint; :mod:`.status` the ``status`` document; :mod:`.monitor` the quality
monitor and reference requests; :mod:`.reference_hooks` how a request reaches the microscope; :mod:`.sd_notify`
the service manager's readiness and watchdog.

Imports the learning, serving, publishing, ingest, configuration, state and wire rooms; only the command line and
the offline room (the live demo) import it.
"""
