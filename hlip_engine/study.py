"""The one data model: a clinical ``Study`` holding ``Scan``s (voxels + geometry + series metadata).

Every other part of HLIP Explorer (preprocessing, model, index, plugin, training) takes these types;
nothing else reads DICOM or NIfTI its own way.

Geometry follows DICOM/ITK: ``Scan.affine`` maps a voxel index ``(column, row, slice)`` (x fastest, as
``ImagePositionPatient``/``ImageOrientationPatient`` define it) to patient **LPS** millimetres, while
``Scan.voxels`` is stored ``(slices, rows, columns)`` like a stack of DICOM images.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np


class StudyLoadError(ValueError):
    """A study, series or file that cannot be read; the message names the file and what is wrong."""


@dataclass(frozen=True)
class PatientInfo:
    """Patient identifiers, kept apart from everything else. ``repr`` hides them so they never reach logs."""

    name: str = ""
    id: str = ""
    birth_date: str = ""
    sex: str = ""

    def __repr__(self) -> str:  # never print identifiers
        return "PatientInfo(<hidden>)"

    __str__ = __repr__


@dataclass
class Scan:
    """One 3-D image (a DICOM series, a NIfTI file, an HLIP tensor).

    voxels : float32 array (slices, rows, columns); CT in Hounsfield units, MR in scanner units (for DICOM:
        the rescaled display values, RescaleSlope / RescaleIntercept applied, no vendor private scale).
    affine : 4x4 float64; voxel index (column, row, slice, 1) -> patient LPS millimetres.
    """

    voxels: np.ndarray
    affine: np.ndarray
    modality: str = ""
    description: str = ""
    series_uid: str = ""
    series_number: int | None = None
    # DICOM attributes a radiologist browses by (ImageType, SequenceName, EchoTime, RepetitionTime,
    # SliceThickness, BodyPartExamined, ConvolutionKernel, AcquisitionNumber, ...), plus loader notes
    # such as "warnings" (missing slices, resampled gantry tilt). A scan made from a 4-D series or a
    # Siemens MOSAIC also says what it is: "ScanKind" ("DWI b=1000 (trace of 64 directions)", "echo 2 of 3",
    # "fMRI mean of 180 volumes"), "DiffusionBValue", "DiffusionDirections", "AveragedVolumes",
    # "EchoIndex"/"NumberOfEchoes", "NumberOfTimePoints"/"TimeStepSeconds", "NumberOfImagesInMosaic".
    attributes: dict[str, Any] = field(default_factory=dict)
    source: str = ""  # file or folder the scan came from

    def __post_init__(self) -> None:
        self.voxels = np.asarray(self.voxels)
        self.affine = np.asarray(self.affine, dtype=np.float64)
        if self.voxels.ndim != 3:
            raise StudyLoadError(f"{self.source or 'scan'}: voxels must be 3-D (slices, rows, columns), "
                                 f"got shape {self.voxels.shape}")
        if self.affine.shape != (4, 4):
            raise StudyLoadError(f"{self.source or 'scan'}: affine must be 4x4, got {self.affine.shape}")

    # --- geometry -----------------------------------------------------------------------------
    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.voxels.shape)  # (slices, rows, columns)

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size in mm, in the order of ``voxels``' axes: (slice, row, column)."""
        col, row, sl = np.linalg.norm(self.affine[:3, :3], axis=0)
        return (float(sl), float(row), float(col))

    @property
    def direction(self) -> np.ndarray:
        """3x3 unit column vectors (column, row, slice directions) in LPS."""
        d = self.affine[:3, :3]
        return d / np.linalg.norm(d, axis=0, keepdims=True)

    @property
    def origin(self) -> np.ndarray:
        """LPS position (mm) of the centre of voxel (0, 0, 0)."""
        return self.affine[:3, 3].copy()

    @property
    def orientation(self) -> str:
        """Acquisition plane as a radiologist names it: axial, coronal, sagittal or oblique."""
        normal = self.direction[:, 2]
        axis = int(np.argmax(np.abs(normal)))
        if abs(normal[axis]) < 0.8:
            return "oblique"
        return ("sagittal", "coronal", "axial")[axis]

    @property
    def affine_zyx(self) -> np.ndarray:
        """4x4 affine from array index (slice, row, column) to world (S, P, L) = LPS reversed.

        Handy for viewers whose axes follow the array order (napari): both sides are reversed.
        """
        perm = np.eye(4)[[2, 1, 0, 3]]
        return perm @ self.affine @ perm

    def world(self, index_slice_row_col) -> np.ndarray:
        """LPS millimetres of a voxel given as (slice, row, column)."""
        s, r, c = index_slice_row_col
        return (self.affine @ np.array([c, r, s, 1.0]))[:3]

    def __repr__(self) -> str:
        return (f"Scan({self.series_number} {self.description!r}, {self.modality}, shape={self.shape}, "
                f"spacing={tuple(round(x, 3) for x in self.spacing)}, {self.orientation})")


@dataclass
class Study:
    """One patient visit: the scans a report describes, and what was skipped while loading it."""

    uid: str
    scans: list[Scan] = field(default_factory=list)
    description: str = ""
    date: str = ""  # YYYYMMDD as DICOM writes it, "" when unknown
    modality: str = ""
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (file or series, reason)
    source: str = ""
    patient: PatientInfo = field(default_factory=PatientInfo, repr=False)
    # the radiology report found in the study (a DICOM SR): {"impression", "findings", "text", "file"}, or {}
    report: dict = field(default_factory=dict, repr=False)

    def __repr__(self) -> str:
        return (f"Study({self.uid!r}, {self.description!r}, {self.date}, {self.modality}, "
                f"{len(self.scans)} scans, {len(self.skipped)} skipped)")


@dataclass(frozen=True)
class StudyRef:
    """A study found by :func:`hlip_engine.discover` from headers only; ``load_study(ref)`` loads it."""

    uid: str
    source: str  # the folder or file the study lives in
    kind: str  # "dicom", "nifti" or "tensors"
    files: tuple[str, ...] = ()
    description: str = ""
    date: str = ""
    modality: str = ""
    n_series: int = 0

    @property
    def path(self) -> Path:
        return Path(self.source)
