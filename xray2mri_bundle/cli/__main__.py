"""``python -m xray2mri_bundle.cli <command> ...``: the same as the ``xray2mri`` console script."""

import sys

from xray2mri_bundle.cli import main

sys.exit(main())
