"""Column names that say they hold a person's identity: what a split rule's ``keep`` never copies
into a manifest in clear (a patient is grouped by a salted key instead)."""

from __future__ import annotations

import re

__all__ = ["names_a_person", "names_a_date_or_free_text"]

# words of a column name that identify a person (keep may copy age, sex, site: never these)
_PERSON_WORDS = frozenset({"mrn", "ssn", "dob", "birth", "birthdate", "accession", "uid", "uids", "address", "street",
                           "zip", "zipcode", "postcode", "email", "mail", "surname", "firstname", "lastname",
                           "fullname", "telephone", "mobile", "nhs", "physician", "operator", "initials"})
# "... name" that names no person: a file, a site, a class
_THING_NAMES = frozenset({"file", "image", "site", "study", "series", "institution", "protocol", "scanner", "device",
                          "station", "class", "label", "disease", "diagnosis", "dataset", "center", "centre",
                          "hospital", "clinic", "model", "body", "part", "concept", "finding", "sequence", "view",
                          "lesion", "column", "folder", "manufacturer", "procedure", "drug", "location", "region"})


def _words(column: str) -> list[str]:
    """A column name's words, lower case: "PatientName" and "patient_name" give ["patient", "name"]."""
    return re.findall(r"[a-z0-9]+", re.sub(r"([a-z0-9])([A-Z])", r"\1 \2", column).lower())


def names_a_person(column: str) -> bool:
    """Whether a column's name says it holds a person's identity: a name ("PatientName", "Patient's
    Name", "name_last", "name" alone; not "file_name" or "site_name"), an identifier of the patient
    or subject ("Patient ID", "OtherPatientIDs", "subject_id", an MRN, accession number, record
    number or UID), a birth date, an address, an e-mail, a telephone number ("phone", not "phone_model").
    "Patient Age" and "Patient Sex" are not."""
    words = _words(column)
    compact = "".join(words)
    if _PERSON_WORDS & set(words) or re.search(r"patients?(id|ids|name|names|number|no|key)$|^patients?(id|name)", compact):
        return True
    for i, word in enumerate(words):
        before, after = (words[i - 1] if i else ""), (words[i + 1] if i + 1 < len(words) else "")
        if word in ("name", "names") and before not in _THING_NAMES:
            return True
        if word in ("id", "ids", "number", "no", "key") and before in ("patient", "patients", "subject", "person", "record",
                                                                      "hospital", "medical"):
            return True
        if word == "phone" and after not in ("model", "type", "make", "brand", "camera"):
            return True
    return False


# words of a column name that say it holds a date (a full date is an identifier under HIPAA's Safe
# Harbor; the year alone, or an age, is not) or free text, where a name or an ID is often typed
_DATE_OR_TEXT_WORDS = frozenset({"date", "dates", "datetime", "timestamp", "report", "reports", "comment", "comments",
                                 "note", "notes", "narrative", "impression", "findings", "transcript"})
# a last word that makes such a name a number or a flag about it ("StudyDate_year", "has_report", "note_id")
_DERIVED_WORDS = frozenset({"year", "years", "count", "counts", "n", "id", "ids", "available", "flag", "missing", "length"})


def names_a_date_or_free_text(column: str) -> bool:
    """Whether a column's name says it holds a date ("StudyDate", "study_date", "AcquisitionDateTime",
    "ISODate") or free text ("Report", "ImageComments", "notes", "Findings"): ``keep`` copies neither
    into a manifest. A year, a count, an ID or a flag about one is not ("StudyDate_year", "has_report")."""
    words = _words(re.sub(r"([A-Z]+)([A-Z][a-z])", r"\1 \2", column))  # an acronym before a word: "ISODate"
    if not words or words[-1] in _DERIVED_WORDS or words[0] in ("has", "is", "n", "num", "number"):
        return False
    return bool(_DATE_OR_TEXT_WORDS & set(words))
