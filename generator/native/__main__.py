"""`python -m generator.native [--sanitize]`: build the native backend now and say where, or why not.

The README's set-up commands run it. A machine that cannot build it still serves: recgen builds the Python models
then and says so. Exits 0 either way, printing a warning with the reason; `--strict` exits 1 instead.
"""

from __future__ import annotations

import argparse
import sys

from generator import native
from generator.errors import NativeUnavailableError


def main() -> int:
    """Build the library (or say why not); the exit status as the module docstring says."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--sanitize", action="store_true", help="the AddressSanitizer and UBSan build")
    parser.add_argument("--strict", action="store_true", help="exit 1 when it cannot be built")
    args = parser.parse_args()
    try:
        print(f"native backend: {native.build(sanitize=args.sanitize)}")
    except NativeUnavailableError as error:
        print(f"warning: {error}\nrecgen serves with the Python models instead.", file=sys.stderr)
        return 1 if args.strict else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
