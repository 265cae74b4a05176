"""Synthetic CT-like studies for the demo, the tests and the benchmarks.

Files are named as a PACS export would name them (nested folders, no UIDs in
the names, no `.dcm` on some), and carry 512x512 16-bit pixel data by default:
a phantom with noise, so compression and rendering see realistic content.
UIDs are derived from the seed, so a run is reproducible.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from vna.part10 import IMPLEMENTATION_CLASS_UID

NAMES = (
    "Müller^Hans",
    "Nguyen^Thi",
    "Smith^John",
    "García^Lucía",
    "Kowalski^Jan",
    "Öztürk^Ayşe",
    "Okafor^Chinwe",
    "Tanaka^Yuki",
)


@dataclass(frozen=True)
class SampleSpec:
    instances: int = 200
    per_series: int = 100
    series_per_study: int = 2
    patients: int = 8
    rows: int = 512
    columns: int = 512
    seed: int = 1
    issuer: str = ""


def _uid(seed: int, *parts: object) -> str:
    return str(generate_uid(entropy_srcs=[str(seed), *map(str, parts)]))


def _phantom(rows: int, cols: int, z: int, rng: np.random.Generator) -> bytes:
    y, x = np.ogrid[:rows, :cols]
    cy, cx = rows / 2, cols / 2
    r2 = ((y - cy) / (rows * 0.42)) ** 2 + ((x - cx) / (cols * 0.36)) ** 2
    body = (r2 <= 1.0).astype(np.int32) * 1040  # soft tissue, stored with intercept -1024
    organ = (((y - cy * 0.9) ** 2 + (x - cx * (1.0 + 0.002 * z)) ** 2) < (rows * 0.09) ** 2) * 80
    noise = rng.integers(0, 24, size=(rows, cols), dtype=np.int32)
    pixels = np.clip(body + organ + noise, 0, 4095).astype("<u2")
    return pixels.tobytes()


def datasets(spec: SampleSpec) -> Iterator[tuple[str, Dataset]]:
    """(relative export path, dataset) for every instance of the sample archive."""
    rng = np.random.default_rng(spec.seed)
    per_study = spec.per_series * spec.series_per_study
    base = dt.date(2026, 1, 5)
    for n in range(spec.instances):
        study_no, rest = divmod(n, per_study)
        series_no, inst_no = divmod(rest, spec.per_series)
        patient_no = study_no % spec.patients
        ds = Dataset()
        ds.SpecificCharacterSet = "ISO_IR 192"
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = _uid(spec.seed, "sop", n)
        ds.StudyInstanceUID = _uid(spec.seed, "study", study_no)
        ds.SeriesInstanceUID = _uid(spec.seed, "series", study_no, series_no)
        ds.PatientName = NAMES[patient_no % len(NAMES)]
        ds.PatientID = f"P{spec.seed:02d}{patient_no:05d}"
        if spec.issuer:
            ds.IssuerOfPatientID = spec.issuer
        ds.PatientBirthDate = f"{1940 + patient_no * 7 % 60}0{1 + patient_no % 9}15"
        ds.PatientSex = "MF"[patient_no % 2]
        day = base + dt.timedelta(days=study_no)
        ds.StudyDate = ds.SeriesDate = ds.ContentDate = day.strftime("%Y%m%d")
        ds.StudyTime = ds.SeriesTime = f"{8 + study_no % 10:02d}{study_no % 60:02d}00"
        ds.ContentTime = f"{8 + study_no % 10:02d}{study_no % 60:02d}{inst_no % 60:02d}"
        ds.AccessionNumber = f"A{spec.seed:02d}{study_no:07d}"
        ds.StudyID = str(study_no + 1)
        ds.StudyDescription = "CT CHEST ABDOMEN PELVIS"
        ds.ReferringPhysicianName = "House^Gregory"
        ds.Modality = "CT"
        ds.SeriesNumber = series_no + 1
        ds.SeriesDescription = ("Axial 1.0mm", "Axial 5.0mm", "Coronal MPR")[series_no % 3]
        ds.BodyPartExamined = "CHEST"
        ds.Manufacturer = "VNA Sample Generator"
        ds.InstitutionName = "Sample Hospital"
        ds.InstanceNumber = inst_no + 1
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.ImagePositionPatient = [-250.0, -250.0, -float(inst_no)]
        ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
        ds.SliceThickness = 1.0
        ds.PixelSpacing = [0.9765625, 0.9765625]
        ds.FrameOfReferenceUID = _uid(spec.seed, "for", study_no)
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows = spec.rows
        ds.Columns = spec.columns
        ds.BitsAllocated = 16
        ds.BitsStored = 12
        ds.HighBit = 11
        ds.PixelRepresentation = 0
        ds.RescaleIntercept = -1024
        ds.RescaleSlope = 1
        ds.WindowCenter = 40
        ds.WindowWidth = 400
        ds.PixelData = _phantom(spec.rows, spec.columns, inst_no, rng)
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = ds.SOPClassUID
        meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        meta.ImplementationClassUID = IMPLEMENTATION_CLASS_UID
        ds.file_meta = meta
        suffix = ".dcm" if n % 2 == 0 else ""
        rel = f"EXPORT{study_no:04d}/SER{series_no + 1:03d}/IM{inst_no + 1:05d}{suffix}"
        yield rel, ds


def generate(out: Path, spec: SampleSpec) -> list[Path]:
    """Write the sample archive below `out` as a PACS export; return the files written."""
    written: list[Path] = []
    for rel, ds in datasets(spec):
        path = out / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        ds.save_as(path, enforce_file_format=True)
        written.append(path)
    return written
