"""`edge-convert`: not implemented yet."""

import sys


def main() -> None:
    sys.exit("edge-convert: not implemented yet")
