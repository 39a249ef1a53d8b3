"""The listener's header reader agrees with pydicom (explicit and implicit VR, nested sequences of defined and
undefined length) and refuses what it cannot walk, so the caller falls back to pydicom."""
from __future__ import annotations

import io

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pynetdicom.dsutils import encode

from hlip_engine.triage.headers import Unreadable, scan
from hlip_engine.triage.instance_check import check_instance, instance_attributes


def sample(undefined: bool) -> Dataset:
    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.4"
    ds.SOPInstanceUID = "1.2.3.4.5"
    ds.StudyInstanceUID = "1.2.3.4"
    ds.SeriesInstanceUID = "1.2.3.4.1"
    inner = Dataset()
    inner.CodeValue = "X"
    inner.ConceptCodeSequence = Sequence([Dataset()])
    ds.ReferencedImageSequence = Sequence([inner, Dataset()])
    ds.ReferencedImageSequence.is_undefined_length = undefined
    for item in ds.ReferencedImageSequence:
        item.is_undefined_length_sequence_item = undefined
    ds.add_new(0x00291010, "OB", b"\x01\x02")  # a private element between
    ds.SamplesPerPixel, ds.Rows, ds.Columns, ds.BitsAllocated, ds.NumberOfFrames = 1, 4, 5, 16, "2"
    ds.PixelData = bytes(4 * 5 * 2 * 2)
    return ds


@pytest.mark.parametrize("implicit", [True, False])
@pytest.mark.parametrize("undefined", [True, False])
def test_scan_reads_what_pydicom_reads(implicit, undefined):
    raw = encode(sample(undefined), implicit, True)
    got = scan(memoryview(raw), implicit)
    assert got == {"SOPInstanceUID": "1.2.3.4.5", "StudyInstanceUID": "1.2.3.4", "SeriesInstanceUID": "1.2.3.4.1",
                   "SamplesPerPixel": 1, "Rows": 4, "Columns": 5, "BitsAllocated": 16, "NumberOfFrames": 2,
                   "PixelDataLength": 80}
    ts = "1.2.840.10008.1.2" if implicit else "1.2.840.10008.1.2.1"
    assert check_instance(got, "1.2.3.4.5", ts) == ("1.2.3.4", "1.2.3.4.1")
    with pytest.raises(ValueError, match="pixel data truncated"):
        check_instance(scan(memoryview(raw[:-2]), implicit) | {"PixelDataLength": 78}, "1.2.3.4.5", ts)
    with pytest.raises(ValueError, match="differs"):
        check_instance(got, "1.2.3.4.6", ts)


def test_unreadable_data_sets_fall_back_to_pydicom():
    raw = encode(sample(True), False, True)
    cut = raw.index(b"\x08\x00\x40\x11") + 24  # inside ReferencedImageSequence
    with pytest.raises(Unreadable):
        scan(memoryview(raw[:cut]), False)
    big = encode(sample(False), False, False)  # big endian: pydicom reads it
    attrs = instance_attributes(io.BytesIO(big), "1.2.840.10008.1.2.2")
    assert attrs["StudyInstanceUID"] == "1.2.3.4" and attrs["PixelDataLength"] == 80
    with pytest.raises(Exception):  # noqa: B017 - whatever pydicom raises on garbage; the SCP answers 0xC000
        pydicom.dcmread(io.BytesIO(b"garbage" * 10), force=False)
