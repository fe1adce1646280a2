"""``python app.py``: parse the command line, then serve the app (the only command so far)."""
from __future__ import annotations

from cli.args import UsageError, fail


def main(argv: list[str]) -> int:
    from cli import serve

    try:
        return serve.run(argv)
    except UsageError as exc:
        return fail(str(exc))
    except KeyboardInterrupt:
        return 130
