"""FitChat: run the biggest LLM your hardware can hold, and chat with it in the browser.

    python app.py [--model PATH.gguf] [--port 7860] [--listen --auth user:password]

See ``python app.py --help``. Everything happens in ``cli``; importing this module does nothing.
"""
from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    from cli.main import main as cli_main

    return cli_main(sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
    sys.exit(main())
