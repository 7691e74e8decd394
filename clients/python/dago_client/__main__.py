"""``python -m dago_client``: the dagoctl command line."""

import sys

from dago_client.cli import main

sys.exit(main())
