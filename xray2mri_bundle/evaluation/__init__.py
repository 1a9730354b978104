"""Evaluation of pseudo-MRI generation (paper section 4): methods and baselines compared on the validation split
through one MONAI ``SupervisedEvaluator`` (PSNR, SSIM, RSSIM, adjacent-slice correlation, joint-space width),
the depth sweep and interpolation studies, figures, and the Markdown report. Outputs are synthetic research
results, not for diagnosis.

Modules: ``methods`` (registry), ``baselines``, ``evaluator`` (engine pieces), ``studies`` (Fig. 6, Table 2),
``records`` (per-knee CSV, summary JSON), ``figures``, ``report``, ``options`` (``EvaluationOptions``: every
setting and its default), ``run`` (``run_evaluation``, behind ``xray2mri evaluate``)::

    from xray2mri_bundle.evaluation import EvaluationOptions, run_evaluation
    run = run_evaluation(EvaluationOptions(model_dir="models/small", dataset_dir="data/cohort", max_knees=12))
"""

from .methods import METHODS, build_method, parse_methods
from .options import EvaluationOptions
from .run import EvaluationRun, run_evaluation

__all__ = ["METHODS", "EvaluationOptions", "EvaluationRun", "build_method", "parse_methods", "run_evaluation"]
