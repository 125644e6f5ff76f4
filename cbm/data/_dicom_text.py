"""Which DICOM header text may reach a report, a manifest, a log or an error message.

Devices and people type free text into code fields (a patient's name into body part or modality,
"DOE^JANE" into NumberOfFrames), and decoders' messages repeat the value they stumbled on. So a
value is copied only in the form its attribute allows (one code word, a defined term, a number, a
UID), and any other message has every text value of the header taken out of it.
"""

from __future__ import annotations

import contextlib
import logging
import re
import threading
from collections.abc import Iterator
from typing import Any

from cbm.errors import quote

__all__ = ["NUMBERISH", "UID", "code_word", "header_text", "redacted", "shown", "quiet_pydicom_values", "pydicom_records_held"]

# Code strings (VR CS) that devices and people fill in as free text, where a patient's name has been
# found ("DOE" is one code word too): kept only as one of DICOM's defined terms for the attribute
_FREE_CODES = frozenset({"BodyPartExamined", "ViewPosition", "ImageLaterality"})
_CODE_WORD = re.compile(r"[A-Z0-9_]{1,16}")
# BodyPartExamined (PS3.16 CID 4031, its code strings), ViewPosition (PS3.3 C.8.11.5.1.1 and the
# mammography views), ImageLaterality (C.7.6.16.2.6.1); a device may write any of them in another case
_DEFINED_CODES = {
    "BodyPartExamined": frozenset(
        "ABDOMEN ABDOMENPELVIS ADRENAL AMNIOTICFLUID ANKLE ANUS AORTA APPENDIX ARM AXILLA BACK BILEDUCT BLADDER "
        "BRAIN BREAST BRONCHUS BUTTOCK CALCANEUS CALF CAROTID CEREBELLUM CERVIX CHEEK CHEST CHESTABDOMEN "
        "CHESTABDPELVIS CIRCLEOFWILLIS CLAVICLE COCCYX COLON CORNEA CORONARYARTERY CSPINE CTSPINE DUODENUM EAR "
        "ELBOW ESOPHAGUS EXTREMITY EYE EYELID FACE FEMUR FINGER FOOT FOREARM GALLBLADDER HAND HEAD HEADNECK "
        "HEART HIP HUMERUS IAC ILEUM ILIUM JAW JEJUNUM KIDNEY KNEE LARYNX LEG LIVER LOWERLIMB LSPINE LSSPINE "
        "LUNG MAXILLA MEDIASTINUM MOUTH NECK NECKCHEST NECKCHESTABDOMEN NECKCHESTABDPELV NOSE ORBIT OVARY "
        "PANCREAS PAROTID PATELLA PELVIS PENIS PHARYNX PROSTATE RADIUS RECTUM RIB SACRUM SCAPULA SCLERA SCROTUM "
        "SHOULDER SKULL SPINE SPLEEN STERNUM STOMACH SUBMANDIBULAR TESTIS THIGH THORAX THUMB THYMUS THYROID "
        "TIBIA TLSPINE TMJ TOE TONGUE TRACHEA TSPINE ULNA UPPERLIMB URETER URETHRA UTERUS VAGINA VULVA "
        "WHOLEBODY WRIST ZYGOMA SKIN HEADNECK CHESTABDPELVIS".split()),
    "ViewPosition": frozenset(
        "AP PA LL RL RLD LLD RLO LLO LAT LATERAL OBLIQUE RAO LAO CC FB LM LMO ML MLO SIO XCC XCCL XCCM".split()),
    "ImageLaterality": frozenset("R L U B".split()),
}
_USUAL_CODES = frozenset().union(*_DEFINED_CODES.values())
# DICOM's defined terms for Modality (PS3.3 C.7.3.1.1.1, retired ones too): a modality shown or kept
# is one of these, so a name typed into the field ("DOE^JANE", "JANEDOE") is never copied
_MODALITIES = frozenset(
    "AR ASMT AU BDUS BI BMD CFM CR CT CTPROTOCOL DG DMS DOC DX ECG EEG EMG EOG EPS ES FID GM HC HD IO IOL IVOCT IVUS "
    "KER KO LEN LS M3D MG MR NM OAM OCT OP OPM OPT OPTBSV OPTENF OPV OSS OT PA PLAN POS PR PT PX REG RESP RF RG RTDOSE "
    "RTIMAGE RTINTENT RTPLAN RTRAD RTRECORD RTSEGANN RTSTRUCT RWV SEG SM SMR SR SRF STAIN TEXTUREMAP TG US VA XA "
    "XAPROTOCOL XC AS CD CF CP CS DD DF DM DS EC FA FS LP MA MS OPR ST VF".split())
# the forms a number and a UID take: a value of either shown in an error message only in that form
NUMBERISH = re.compile(r"[0-9eE.+\- ]{1,24}")
UID = re.compile(r"[0-9.]{1,64}")


def code_word(value: Any, keyword: str | None = None) -> str:
    """A header value kept only as one word of DICOM's code-string alphabet (at most 16 of A-Z, 0-9
    and underscore: "CHEST", "PA", "L"), in capitals where a device wrote a usual term in another
    case ("Chest"), else ""; given the attribute's ``keyword`` (body part, view, laterality), only as
    one of its defined terms: what a device or a person typed there ("SKIN Jane Doe", "DOE") is
    never copied into a report or manifest."""
    text = "" if value is None else str(value).strip()
    text = text.upper() if text.upper() in _USUAL_CODES else text
    if keyword in _DEFINED_CODES:
        return text if text in _DEFINED_CODES[keyword] else ""
    return text if _CODE_WORD.fullmatch(text) else ""


def header_text(keyword: str, value: Any) -> str:
    """A header attribute's value as text for a manifest or a report: :func:`code_word` for the
    code strings people type free text into (body part, view, laterality), a defined term for the
    modality, else as it stands."""
    if value is None:
        return ""
    if keyword == "Modality":
        term = str(value).strip().upper()
        return term if term in _MODALITIES else ""
    return code_word(value, keyword) if keyword in _FREE_CODES else str(value)


def shown(value: Any, pattern: re.Pattern, what: str = "bad value") -> str:
    """A header value for an error message, "the <what> '12a'" where it has the form its attribute
    allows (a number, a UID), else not shown, since a mistyped field can hold a patient's name."""
    text = str(value).strip()
    if pattern.fullmatch(text):
        return f"the {what} {quote(text, 60)}"
    return f"a {what} of {len(text)} characters (not shown, as header text can name a patient)"


def redacted(text: str, ds: Any) -> str:
    """``text`` (a decoder's or pydicom's message) with the header's text values taken out, longest
    first and as whole words ("got 120" keeps its number where that is no header text): such
    messages can repeat the value they stumbled on."""
    values = {v for v in _text_values(ds) if len(v) >= 3 and v in text} if ds is not None else set()
    for v in sorted(values, key=len, reverse=True):  # only those in the message: a header has thousands
        text = re.sub(rf"(?<![A-Za-z0-9]){re.escape(v)}(?![A-Za-z0-9])", "<header text>", text)
    return text


# value representations that hold text a person or a device typed, and those that are codes, numbers
# or UIDs, whose values are taken out only where they do not have that form
_FREE_VRS = frozenset({"PN", "LO", "SH", "ST", "LT", "UT", "UC", "AE", "DA", "DT", "TM", "AS", "UR"})
_FORMED_VRS = {"CS": _CODE_WORD, "IS": NUMBERISH, "DS": NUMBERISH, "UI": UID}


def _text_values(ds: Any) -> Iterator[str]:
    """The text values of a data set that a message must not repeat, sequences' items included, and
    a person name's parts. The pixel data and other binary elements are never read
    (``keep_deferred``); an element pydicom cannot convert (often the cause of the message) is read
    from its raw bytes, as UTF-8 and as Latin-1; an element whose VR the file does not give (implicit
    VR, or UN) is taken as its dictionary VR, or as text where the dictionary lacks it (private tags)."""
    from pydicom.datadict import dictionary_VR
    from pydicom.multival import MultiValue

    for tag in list(ds.keys()):
        try:
            element = ds.get_item(tag, keep_deferred=True)
            vr = element.VR if element.VR not in (None, "UN") else _defined_vr(tag, dictionary_VR)
            if vr == "SQ":
                for item in ds[tag].value:
                    yield from _text_values(item)
                continue
            if vr not in _FREE_VRS and vr not in _FORMED_VRS:
                continue
            value = element.value
            if isinstance(value, bytes):
                value = [part for form in dict.fromkeys((value.decode("utf-8", "replace"), value.decode("latin-1")))
                         for part in form.split("\\")]
        except Exception:  # noqa: BLE001 - an unknown VR, a sequence that does not parse
            continue
        for v in value if isinstance(value, (list, tuple, MultiValue)) else [value]:
            raw = getattr(v, "original_string", None)  # a person name's bytes, decoded by another character set
            for text in dict.fromkeys([str(v).strip(" \0")] + ([raw.decode("utf-8", "replace").strip(" \0")]
                                                                 if isinstance(raw, bytes) else [])):
                if vr in _FREE_VRS or not _FORMED_VRS[vr].fullmatch(text):
                    yield text
                    if vr == "PN":  # "DOE^JANE": a message may quote one part of the name
                        yield from (part for part in re.split(r"[\^=]", text) if part)


def _defined_vr(tag: Any, dictionary_vr: Any) -> str:
    try:
        return "UT" if tag.is_private else dictionary_vr(tag).split(" or ")[0]
    except KeyError:  # a public tag this pydicom does not know
        return "UT"


class _NoQuotedValues(logging.Filter):
    """pydicom logs the value it found wrong ("Invalid value for VR PN: 'DOE^JANE'", with ``!r``, so a
    name with an apostrophe comes in double quotes, and a value holding both quotes with escaped
    ones), as well as warning it: each record is cut at its first quote, everything after it taken
    out (the warnings, cbm's readers hold back). A quote after a letter is an apostrophe (after a
    digit it is a quote: "1'DOE^JANE'"). A broken file can make pydicom log thousands of
    records; after :data:`_RECORDS_PER_READ` in one read (per thread) one record says the rest
    are not logged, and they are dropped."""

    _OPENING = re.compile(r"""(?<![A-Za-z])b?['"]""")

    def filter(self, record: logging.LogRecord) -> bool:
        left = getattr(_BUDGET, "left", _RECORDS_PER_READ)
        _BUDGET.left = left - 1
        if left <= 0:
            return False
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a record that cannot format itself is left to logging
            return True
        quote_at = self._OPENING.search(message)
        if quote_at is not None:
            message = message[: quote_at.start()] + "'<header text>'"
        if left == 1:
            message += f" (more pydicom records about this file are not logged: {_RECORDS_PER_READ} per file)"
        record.msg, record.args = message, ()
        held = getattr(_BUDGET, "held", None)
        if held is not None:  # this thread's records are kept back (:func:`pydicom_records_held`)
            held.append(record)
            return False
        return True


_RECORDS_PER_READ = 20
_BUDGET = threading.local()  # pydicom records still to log in this thread's current read; those held back
_INSTALLED = [-1]  # how many loggers the process had when the filters were last put in place


def quiet_pydicom_values() -> None:
    """Keep header values out of pydicom's log records: the filter on the ``pydicom`` logger and on
    each of its children that exists (a logger's filters do not see its children's records, and
    pydicom's pixel decoders log through their own); called again before each read, for children
    imported since, and to give the read its own share of log records."""
    _BUDGET.left = _RECORDS_PER_READ  # a new read: its own share of log records
    loggers = logging.root.manager.loggerDict
    if len(loggers) == _INSTALLED[0]:  # no logger made since the last call: nothing new to filter (a read's hot path)
        return
    _INSTALLED[0] = len(loggers)
    names = ["pydicom", *(n for n in list(loggers) if n.startswith("pydicom."))]
    for logger in (logging.getLogger(n) for n in names):
        if not any(isinstance(f, _NoQuotedValues) for f in logger.filters):
            logger.addFilter(_NoQuotedValues())


@contextlib.contextmanager
def pydicom_records_held() -> Iterator[list[logging.LogRecord]]:
    """pydicom's records of this thread kept back (cut as :class:`_NoQuotedValues` cuts them) and
    yielded, for the caller to log (``logging.getLogger(r.name).callHandlers(r)``) or drop: a file
    that is no image PIL knows, tried as DICOM, makes pydicom warn of "VR lookup failed", which says
    nothing true of it if it is not DICOM either. Other threads' records go on as ever."""
    quiet_pydicom_values()  # every pydicom logger there is has the filter that holds
    _BUDGET.held = held = []
    try:
        yield held
    finally:
        _BUDGET.held = None
