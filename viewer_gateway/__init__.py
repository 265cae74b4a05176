"""DICOMweb service (QIDO-RS, WADO-RS, WADO-URI) over the archive's index and layout."""
