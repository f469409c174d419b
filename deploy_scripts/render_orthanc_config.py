#!/usr/bin/env python3
"""Render orthanc.json.template with ${VARIABLE}s taken from the environment.

Usage: render_orthanc_config.py TEMPLATE OUTPUT. Every ${NAME} in the template must be set in
the environment (start_orthanc.sh exports them); the result is checked to be valid JSON.
"""

from __future__ import annotations

import json
import os
import string
import sys
from pathlib import Path


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    template = string.Template(Path(argv[1]).read_text(encoding="utf-8"))
    try:
        text = template.substitute(os.environ)
    except KeyError as missing:
        print(f"error: {argv[1]} needs the environment variable {missing}", file=sys.stderr)
        return 2
    try:
        json.loads(text)
    except json.JSONDecodeError as error:
        print(f"error: rendered {argv[1]} is not valid JSON: {error}", file=sys.stderr)
        return 2
    Path(argv[2]).write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
