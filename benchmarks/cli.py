"""`edge-bench`: not implemented yet."""

import sys


def main() -> None:
    sys.exit("edge-bench: not implemented yet")
