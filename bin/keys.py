"""Make CURVE keys for the bus: `python -m bin.keys [DIR]` (default ./data/bus-keys), then set BUS_KEYS_DIR=DIR for
every process. Secret keys are written with 0600 permissions."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from services import curve


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bin.keys", description=__doc__)
    parser.add_argument("dir", nargs="?", type=Path, default=Path("data/bus-keys"))
    args = parser.parse_args(argv)
    if (args.dir / "server.key_secret").exists():
        print(f"{args.dir} already has keys; remove it first to make new ones", file=sys.stderr)
        return 1
    curve.generate(args.dir)
    print(f"keys written to {args.dir}; set BUS_KEYS_DIR={args.dir.resolve()} for every process")
    return 0


if __name__ == "__main__":
    sys.exit(main())
