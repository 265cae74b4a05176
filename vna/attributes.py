"""The one table of DICOM attributes the index keeps.

The index schema, the values extracted at ingest, QIDO-RS matching and
`includefield` all read this table, so an attribute is added in one place.
Keywords only: tags come from pydicom's dictionary when needed.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Level(enum.Enum):
    PATIENT = "patient"
    STUDY = "study"
    SERIES = "series"
    INSTANCE = "instance"


class Match(enum.Enum):
    """How QIDO-RS matches an attribute (PS3.4 C.2.2.2)."""

    SINGLE = "single"  # single value, wildcard on strings
    UID = "uid"  # single value or UID list
    DATE = "date"  # single value or range
    TIME = "time"
    PERSON_NAME = "person-name"  # wildcard, fuzzy
    INTEGER = "integer"
    NONE = "none"  # returned, never matched


@dataclass(frozen=True)
class Attribute:
    keyword: str
    level: Level
    column: str
    match: Match
    length: int = 64  # maximum stored characters (the VR's maximum)


ATTRIBUTES: tuple[Attribute, ...] = (
    # Patient (PS3.18 Table 10.6.1-5, study level rows about the patient)
    Attribute("PatientID", Level.PATIENT, "patient_id", Match.SINGLE, 64),
    Attribute("IssuerOfPatientID", Level.PATIENT, "issuer_of_patient_id", Match.SINGLE, 64),
    Attribute("PatientName", Level.PATIENT, "patient_name", Match.PERSON_NAME, 324),
    Attribute("PatientBirthDate", Level.PATIENT, "patient_birth_date", Match.DATE, 8),
    Attribute("PatientSex", Level.PATIENT, "patient_sex", Match.SINGLE, 16),
    # Study
    Attribute("StudyInstanceUID", Level.STUDY, "study_uid", Match.UID, 64),
    Attribute("StudyDate", Level.STUDY, "study_date", Match.DATE, 8),
    Attribute("StudyTime", Level.STUDY, "study_time", Match.TIME, 28),
    Attribute("AccessionNumber", Level.STUDY, "accession_number", Match.SINGLE, 16),
    Attribute(
        "ReferringPhysicianName", Level.STUDY, "referring_physician_name", Match.PERSON_NAME, 324
    ),
    Attribute("StudyID", Level.STUDY, "study_id", Match.SINGLE, 16),
    Attribute("StudyDescription", Level.STUDY, "study_description", Match.SINGLE, 64),
    Attribute("PatientAge", Level.STUDY, "patient_age", Match.SINGLE, 4),
    Attribute("TimezoneOffsetFromUTC", Level.STUDY, "timezone_offset", Match.NONE, 16),
    # Series
    Attribute("SeriesInstanceUID", Level.SERIES, "series_uid", Match.UID, 64),
    Attribute("Modality", Level.SERIES, "modality", Match.SINGLE, 16),
    Attribute("SeriesNumber", Level.SERIES, "series_number", Match.INTEGER, 12),
    Attribute("SeriesDescription", Level.SERIES, "series_description", Match.SINGLE, 64),
    Attribute("SeriesDate", Level.SERIES, "series_date", Match.DATE, 8),
    Attribute("SeriesTime", Level.SERIES, "series_time", Match.TIME, 28),
    Attribute("BodyPartExamined", Level.SERIES, "body_part_examined", Match.SINGLE, 16),
    Attribute("Laterality", Level.SERIES, "laterality", Match.SINGLE, 16),
    Attribute("PerformedProcedureStepStartDate", Level.SERIES, "pps_start_date", Match.DATE, 8),
    Attribute("PerformedProcedureStepStartTime", Level.SERIES, "pps_start_time", Match.TIME, 28),
    Attribute("Manufacturer", Level.SERIES, "manufacturer", Match.SINGLE, 64),
    Attribute("StationName", Level.SERIES, "station_name", Match.SINGLE, 16),
    Attribute("InstitutionName", Level.SERIES, "institution_name", Match.SINGLE, 64),
    # Instance
    Attribute("SOPInstanceUID", Level.INSTANCE, "sop_uid", Match.UID, 64),
    Attribute("SOPClassUID", Level.INSTANCE, "sop_class_uid", Match.UID, 64),
    Attribute("InstanceNumber", Level.INSTANCE, "instance_number", Match.INTEGER, 12),
    Attribute("Rows", Level.INSTANCE, "rows", Match.INTEGER, 5),
    Attribute("Columns", Level.INSTANCE, "columns", Match.INTEGER, 5),
    Attribute("BitsAllocated", Level.INSTANCE, "bits_allocated", Match.INTEGER, 5),
    Attribute("NumberOfFrames", Level.INSTANCE, "number_of_frames", Match.INTEGER, 12),
    Attribute("ContentDate", Level.INSTANCE, "content_date", Match.DATE, 8),
    Attribute("ContentTime", Level.INSTANCE, "content_time", Match.TIME, 28),
    Attribute("AcquisitionNumber", Level.INSTANCE, "acquisition_number", Match.INTEGER, 12),
)

BY_KEYWORD: dict[str, Attribute] = {a.keyword: a for a in ATTRIBUTES}


def at_level(level: Level) -> tuple[Attribute, ...]:
    """The attributes stored on one level's table."""
    return tuple(a for a in ATTRIBUTES if a.level is level)
