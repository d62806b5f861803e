"""The modalities cminet fuses with an MRI, in one table: what each is called in a dataset
folder, in DICOM and on the command line, whether it is a grey or a functional (pseudo-colour)
image, and how a volume of it is displayed by default.

Everything that needs to know "is this PET?" reads it here: dataset folders
(:mod:`cminet.runtime.folders`), volumes (:mod:`cminet.runtime.volume`), the CLI's choices,
evaluation's colour metrics and training's colour augmentation.
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import CMINetError


@dataclass(frozen=True)
class Modality:
    key: str  # what --modality takes: "ct", "pet", "spect"
    name: str  # what people write: "CT", "PET", "SPECT"
    pair_type: str  # its dataset folder: <root>/<pair_type>/{mri,other}/
    dicom: str  # DICOM Modality (0008,0060): CT, PT, NM
    functional: bool  # a pseudo-colour functional image (RGB), or a grey anatomical one
    palette: str | None  # a volume's default DICOM palette (None: grey)
    window: tuple[float, float] | None  # a volume's default display window in its units (None: from the data)
    saturated: float  # share of its head that may sit at the window's top before cminet warns


MODALITIES: dict[str, Modality] = {m.key: m for m in (
    # HU: brain / soft tissue (level 40, width 400); bone stays white, so up to a third of a
    # head CT sits at the top. PET/SPECT: the brightest uptake should keep its gradient.
    Modality("ct", "CT", "ct_mri", "CT", functional=False, palette=None, window=(-160.0, 240.0), saturated=0.35),
    Modality("pet", "PET", "pet_mri", "PT", functional=True, palette="HOT_IRON", window=None, saturated=0.05),
    Modality("spect", "SPECT", "spect_mri", "NM", functional=True, palette="HOT_IRON", window=None, saturated=0.05),
)}
PAIR_TYPES = tuple(m.pair_type for m in MODALITIES.values())


def modality(key: str) -> Modality:
    """``ct`` / ``pet`` / ``spect`` (any case) → its row, or a one-line error."""
    found = MODALITIES.get(str(key).strip().lower())
    if found is None:
        raise CMINetError(f"modality: expected one of {', '.join(MODALITIES)}, got {key!r}")
    return found


def from_dicom(code: str | None) -> Modality | None:
    """The row of a DICOM Modality code (CT, PT, NM), None for any other."""
    return next((m for m in MODALITIES.values() if m.dicom == code), None)


def from_pair_type(pair_type: str) -> Modality | None:
    """The row of a dataset folder name (ct_mri, pet_mri, spect_mri), None for another folder."""
    return next((m for m in MODALITIES.values() if m.pair_type == pair_type), None)


__all__ = ["MODALITIES", "PAIR_TYPES", "Modality", "from_dicom", "from_pair_type", "modality"]
