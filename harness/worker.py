"""`python -m fp4check.worker`: run one check from a JSON spec on stdin, print its rows (for --isolate)."""

from __future__ import annotations

import json
import sys

from fp4check.errors import InputError
from fp4check.runner import ROW_MARK, execute


def main() -> None:
    spec = json.loads(sys.stdin.read())
    try:
        rows = execute(spec)
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    for row in rows:
        print(ROW_MARK + json.dumps(row, default=float), flush=True)


if __name__ == "__main__":
    main()
