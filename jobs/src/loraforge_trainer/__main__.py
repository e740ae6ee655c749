"""`python -m loraforge_trainer` (what torchrun runs: `torchrun ... -m loraforge_trainer --config ...`)."""

import sys

from .cli import main

sys.exit(main())
