"""Library of the xray2mri MONAI Label app: settings, request checks and the pseudo-MRI infer task."""
