"""``python app.py [COMMAND] ...``: serve the app (default), or run a command.

Commands live in their own modules and are imported only when used.
"""
from __future__ import annotations

import importlib

from cli.args import UsageError, fail

COMMANDS = {
    "plan": "cli.plan",          # python app.py plan MODEL ...   (issue 3)
    "download": "cli.download",  # python app.py download REPO ... (issue 4)
    "quality": "cli.quality",    # python app.py quality MODEL [--ref MODEL] (issue 15)
}


def main(argv: list[str]) -> int:
    name = argv[0] if argv and argv[0] in COMMANDS else "serve"
    module_name = COMMANDS.get(name, "cli.serve")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name != module_name:
            raise
        return fail(f"the {name!r} command is not available in this version")
    try:
        return module.run(argv[1:] if name != "serve" else argv)
    except UsageError as exc:
        return fail(str(exc))
    except KeyboardInterrupt:
        return 130
