import sys

from neurohw.cli import main

sys.exit(main())
