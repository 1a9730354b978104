"""Synthetic OAI-like knee cohort: 3-D knee phantoms, coronal T1 MRI series and bilateral PA films.

Everything written is synthetic (analytic phantoms), labelled as such, and not for diagnosis.
Entry points: :func:`make_cohort` (Python) and ``xray2mri make-cohort`` (``xray2mri_bundle.cli.make_cohort``).
"""

from .generate import CohortConfig, make_cohort, simulate_subject, write_subject
from .grading import KL_PRIOR, sample_kl_grades

__all__ = ["KL_PRIOR", "CohortConfig", "make_cohort", "sample_kl_grades", "simulate_subject", "write_subject"]
