"""``python -m xray2mri_bundle.cohort --out DIR --knees N``: same as ``xray2mri make-cohort``."""

import sys

from xray2mri_bundle.cli.make_cohort import main

sys.exit(main())
