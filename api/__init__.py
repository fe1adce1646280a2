"""HTTP APIs served beside the UI (OpenAI-compatible)."""
