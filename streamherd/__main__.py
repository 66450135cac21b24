"""``python -m streamherd`` is the ``streamherd`` command."""

import sys

from streamherd.cli import main

sys.exit(main())
