"""Developer tools used by tests and benchmarks (not by the app)."""
