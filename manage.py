#!/usr/bin/env python
from __future__ import annotations

import os
import sys


def main() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "controlplane.config.settings")
    # `manage.py up --demo` is the demo, run directly as well as through `make demo`: its settings
    # are the demo's (a generated secret key, the embedded servers), not production's, which
    # refuse to start without SECRET_KEY, DATABASE_URL and REDIS_URL.
    if sys.argv[1:2] == ["up"] and "--demo" in sys.argv[2:]:
        os.environ.setdefault("CONTROLPLANE_ENV", "demo")
    from django.core.management import execute_from_command_line

    execute_from_command_line(sys.argv)


if __name__ == "__main__":
    main()
