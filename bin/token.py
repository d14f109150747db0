"""The web's access token, needed when WEB_HOST is not loopback. `python -m bin.token url` prints the link to open on
a phone; `python -m bin.token rotate` replaces the token, which ends every session (a running web notices within a
second, and closes their WebSockets)."""
from __future__ import annotations

import argparse
import sys

from services import access_token, config
from services.config import ConfigError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bin.token", description=__doc__)
    parser.add_argument("command", choices=["url", "rotate"], help="print the link, or make a new token")
    args = parser.parse_args(argv)
    try:
        settings = config.load()
        token_path = access_token.path(settings)
        token = access_token.rotate(token_path) if args.command == "rotate" else access_token.read_or_create(
            token_path)
        if args.command == "rotate":
            print(f"new token written to {token_path}: every earlier session has ended", file=sys.stderr)
        if not access_token.required(settings):
            print(f"WEB_HOST={settings.web_host} is loopback: this machine needs no token; set WEB_HOST (see README, "
                  "Use it from your phone) to open the app from another device", file=sys.stderr)
            return 0
        print(access_token.public_url(settings, token))
    except ConfigError as error:
        print(error, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
