import sys

from crosslens.cli import main

sys.exit(main())
