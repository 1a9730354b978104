"""Training engines of the bundle: MONAI SupervisedTrainer/SupervisedEvaluator wiring helpers.

Submodules (import them directly; this package imports nothing heavy on its own):
``prepare_batch`` (batch -> network inputs, incl. the diffusion noising and CFG dropout), ``losses``
(AutoencoderKL L2 + KL), ``handlers`` (EMA, NaN/explosion stop, resume from the latest checkpoint, latent scale
factor, final export), ``validation`` (sampled-slice PSNR/SSIM), ``schedules`` (LambdaLinear warm-up),
``denoiser`` (UNet + trainable X-ray encoder), ``checkpoints`` (file layout), ``datalist`` (dataset -> datalist
with a clear error), ``stages`` (autoencoder -> classifier -> diffusion with skip/resume), ``tracking`` (MLflow),
``distributed`` (torchrun/DDP), ``training_run`` (the bundle training as one call, behind ``xray2mri train``).
"""
