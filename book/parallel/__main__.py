"""``python -m book.parallel module:function [args...]``: what ``launch`` runs in each rank for a function.

The function is imported by name (``module`` is a dotted name, or the path of a ``.py`` file) and called with the remaining arguments (strings); an int it
returns is the process's exit status.
"""

import importlib
import importlib.util
import sys
from pathlib import Path


def main(argv: list[str]) -> int:
    if not argv or ":" not in argv[0]:
        print("usage: python -m book.parallel module:function [args...]", file=sys.stderr)
        return 2
    module, _, name = argv[0].partition(":")
    if module.endswith(".py"):
        spec = importlib.util.spec_from_file_location(Path(module).stem, module)
        fn = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(fn)
    else:
        fn = importlib.import_module(module)
    for part in name.split("."):
        fn = getattr(fn, part)
    status = fn(*argv[1:])
    return status if isinstance(status, int) else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
