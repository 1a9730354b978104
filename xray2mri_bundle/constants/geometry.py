"""Frame and MRI geometry: the joint-centred frame, the OAI MRI field of view, slices and spacing (mm)."""

from __future__ import annotations

__all__ = [
    "CORONAL_ORIENTATION_LPS",
    "DEFAULT_PNG_SPACING_MM",
    "FRAME_MM",
    "MRI_FOV_MM",
    "MRI_KEPT_SLICES",
    "MRI_SLICES",
    "MRI_SLICE_MM",
    "OAI_MRI_FOV_MM",
    "REFERENCE_SLICES",
    "REFERENCE_SPACING_MM",
]

#: Side of the joint-centred frame in the patient's plane (mm): the paper's 299 px X-ray crop at 0.468 mm.
#: The X-ray crop and the MRI slice both cover it, centred on the knee joint.
FRAME_MM: float = 140.0
#: Field of view of a generated slice: the joint-centred frame the model is trained in, so a pixel is
#: ``MRI_FOV_MM / H`` mm (0.547 mm at 256 px) and the in-plane centre of the volume is the knee joint.
MRI_FOV_MM: float = FRAME_MM
#: Default spacing of X-ray files without calibration (PNG): 140 mm / 299 px, so the frame is the paper's crop.
DEFAULT_PNG_SPACING_MM: float = FRAME_MM / 299.0
#: OAI COR_T1_3D_FLASH (and the synthetic cohort): 80 coronal slices of 1.5 mm over a 160 mm square.
OAI_MRI_FOV_MM: float = 160.0
MRI_SLICES: int = 80
MRI_SLICE_MM: float = 1.5
#: 0-based slices that show the condyles / plateau (the paper keeps 13..63).
MRI_KEPT_SLICES: tuple[int, int] = (13, 63)
#: The training volumes: 50 coronal slices (13..63 of 80) of 1.5 mm.
REFERENCE_SLICES: int = 50
REFERENCE_SPACING_MM: float = MRI_SLICE_MM
#: DICOM ImageOrientationPatient of a coronal slice as OAI's COR_T1 series and the generated series store it (LPS+):
#: rows run to the patient's left (+x), columns inferior (-z); slices then step along +y (posterior).
CORONAL_ORIENTATION_LPS: tuple[str, ...] = ("1", "0", "0", "0", "0", "-1")
