"""refscope.daemon — the service shell around refscope.models: ingest, pairing, serving, publishing, CLI."""
__all__: list[str] = []
