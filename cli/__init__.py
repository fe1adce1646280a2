"""Command-line entry points. Parsing happens only when ``main`` is called, never at import."""
