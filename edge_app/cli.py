"""`edge-app`: not implemented yet."""

import sys


def main() -> None:
    sys.exit("edge-app: not implemented yet")
