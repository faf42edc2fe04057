"""``python -m smartedit``: the ``smartedit`` command (smartedit.cli.main)."""

import sys

from smartedit.cli.main import main

if __name__ == "__main__":
    sys.exit(main())
