"""Command-line entry point (filled in below)."""


def main() -> int:
    raise SystemExit("not yet")
