"""Evaluation of pseudo-MRI generation (paper section 4): methods and baselines compared on the validation split
through one MONAI ``SupervisedEvaluator`` (PSNR, SSIM, RSSIM, adjacent-slice correlation, joint-space width),
the depth sweep and interpolation studies, figures, and the Markdown report. Outputs are synthetic research
results, not for diagnosis.

Modules: ``methods`` (registry), ``baselines``, ``evaluator`` (engine pieces), ``studies`` (Fig. 6, Table 2),
``records`` (per-knee CSV, summary JSON), ``figures``, ``report``, ``run`` (``run_evaluation``, behind
``xray2mri evaluate``).
"""

from .methods import METHODS, build_method, parse_methods

__all__ = ["METHODS", "build_method", "parse_methods"]
