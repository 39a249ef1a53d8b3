"""The report as a Comprehensive 3D SR following TID 1500 (Measurement Report), built with highdicom.

Content tree (every group names the algorithm: model, version, checkpoint sha256, prompt set, templates):

- one TID 1501 measurement group per zero-shot finding: tracking identifier ``HLIP finding: NAME``,
  finding type ``(Hxxxx, 99HLIP, NAME)``, measurement ``(122157, DCM, "Probability")`` in UCUM ``1``;
- one group per relevance prompt, tracking identifier ``HLIP relevance: PROMPT``: TID 1410 with the peak as
  a SCOORD3D POINT in the study's frame of reference when there is one, else TID 1501 without coordinates;
  a ``Scan importance`` measurement per source scan, each selected from the image at that scan's most
  relevant slice;
- a Qualitative Evaluations container whose TEXT items say the result is a research result, not for
  clinical use, and why anything is missing (no frame of reference, a map not written).

VerificationFlag is UNVERIFIED; the source series are the evidence (Current Requested Procedure Evidence).
"""
from __future__ import annotations

import numpy as np

from .parametric_map import MANUFACTURER, RESEARCH, _lo
from .uids import code_value, study_uid_for, uid

SCHEME = "99HLIP"
SR_SERIES_NUMBER = 9000
FINDING_PREFIX = "HLIP finding: "
RELEVANCE_PREFIX = "HLIP relevance: "
STATEMENT = f"HLIP Explorer zero-shot output: a {RESEARCH}. Not reviewed by a physician."


def _code(text: str):
    from highdicom.sr import CodedConcept

    return CodedConcept(value=code_value(text), scheme_designator=SCHEME, meaning=_lo(text))


def importance_concept():
    from highdicom.sr import CodedConcept

    return CodedConcept(value="HSCANIMP", scheme_designator=SCHEME, meaning="Scan importance")


def _algorithm(analysis, extra=()):
    from highdicom.sr import AlgorithmIdentification

    params = [f"checkpoint sha256 {analysis.fingerprint}"]
    if analysis.prompt_set:
        params.append(f"prompt set {analysis.prompt_set}")
    if analysis.mode:
        params.append(f"mode {analysis.mode}")
    if analysis.spec.get("template_set"):
        params.append(f"template set {analysis.spec['template_set']}")
    params += [f"template {t}" for t in analysis.templates]
    params += list(extra)
    return AlgorithmIdentification(name=_lo(f"HLIP {analysis.model_name}"), version=_lo(analysis.model_version),
                                   parameters=params, manufacturer=MANUFACTURER)


def _procedure(study):
    from pydicom.sr.codedict import codes

    modality = (study.modality or "").split("/")[0].upper()
    if modality == "CT":
        return codes.LN.CTUnspecifiedBodyRegion
    if modality == "MR":
        return codes.LN.MRIUnspecifiedBodyRegion
    from highdicom.sr import CodedConcept

    return CodedConcept(value="363679005", scheme_designator="SCT", meaning="Imaging procedure")


def stand_in_evidence(study):
    """A header-only dataset carrying the study's identifiers, for studies without DICOM images."""
    from pydicom.dataset import Dataset

    ds = Dataset()
    ds.StudyInstanceUID = study_uid_for(study)
    ds.PatientID = study.patient.id
    ds.PatientName = study.patient.name
    ds.PatientBirthDate = study.patient.birth_date
    ds.PatientSex = study.patient.sex if study.patient.sex in ("M", "F", "O") else ""
    ds.AccessionNumber = ""
    ds.StudyID = ""
    ds.StudyDate = study.date or ""
    ds.StudyTime = ""
    ds.ReferringPhysicianName = ""
    # highdicom sorts evidence by instance even when it records none: name a stand-in that is never written
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    ds.SOPInstanceUID = uid(ds.StudyInstanceUID, "no-dicom-source")
    ds.SeriesInstanceUID = uid(ds.StudyInstanceUID, "no-dicom-series")
    return ds


def _finding_group(analysis, key, name, probability, algorithm):
    import highdicom as hd
    from pydicom.sr.codedict import codes

    tracking = hd.sr.TrackingIdentifier(uid=uid(key, "finding", name), identifier=FINDING_PREFIX + name)
    prob = hd.sr.Measurement(name=codes.DCM.Probability, value=float(probability), unit=codes.UCUM.NoUnits)
    return hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=tracking, finding_type=_code(name), algorithm_id=algorithm, measurements=[prob])


def _relevance_group(analysis, key, item, sources, algorithm):
    import highdicom as hd
    from pydicom.sr.codedict import codes

    by_scan = {s.scan_index: s for s in sources or []}
    rel = item.relevance
    peak_slices = dict(zip(rel.volume_scans or [], rel.peak_slices()))
    measurements = []
    for k, share in item.importance.items():
        refs = None
        src = by_scan.get(k)
        if src is not None and src.datasets:
            slice_k = item.peak_voxel[0] if k == item.peak_scan and item.peak_voxel else peak_slices.get(k, 0)
            sop_class, sop, frame = src.image_at(int(slice_k))
            refs = [hd.sr.SourceImageForMeasurement(sop_class, sop, [frame] if frame else None)]
        measurements.append(hd.sr.Measurement(name=importance_concept(), value=float(share),
                                              unit=codes.UCUM.NoUnits, referenced_images=refs))
    tracking = hd.sr.TrackingIdentifier(uid=uid(key, "relevance", item.prompt),
                                        identifier=RELEVANCE_PREFIX + item.prompt)
    peak_src = by_scan.get(item.peak_scan)
    if item.peak_lps is not None and peak_src is not None and peak_src.frame_of_reference:
        region = hd.sr.ImageRegion3D(graphic_type=hd.sr.GraphicTypeValues3D.POINT,
                                     graphic_data=np.asarray([item.peak_lps], dtype=np.float64),
                                     frame_of_reference_uid=peak_src.frame_of_reference)
        return hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
            tracking_identifier=tracking, referenced_region=region, finding_type=_code(item.prompt),
            algorithm_id=algorithm, measurements=measurements)
    return hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=tracking, finding_type=_code(item.prompt), algorithm_id=algorithm,
        measurements=measurements)


def _comments(texts):
    """The TID 1500 Qualitative Evaluations container holding one TEXT item per line of ``texts``."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    box = hd.sr.ContainerContentItem(
        name=hd.sr.CodedConcept(value="C0034375", scheme_designator="UMLS", meaning="Qualitative Evaluations"),
        relationship_type=hd.sr.RelationshipTypeValues.CONTAINS)
    box.ContentSequence = hd.sr.ContentSequence([
        hd.sr.TextContentItem(name=codes.DCM.Comment, value=t, relationship_type=hd.sr.RelationshipTypeValues.CONTAINS)
        for t in texts])
    return box


def build_sr(analysis, sources, key: str, notes: list[str]):
    """The ``highdicom.sr.Comprehensive3DSR`` of ``analysis``. ``sources``: the SeriesSource of each used
    scan (DICOM studies), or None for a study without DICOM images (then no spatial coordinates)."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    algorithm = _algorithm(analysis)
    groups = [_finding_group(analysis, key, name, p, algorithm) for name, p in analysis.findings.items()]
    if analysis.relevance:
        rel_algorithm = _algorithm(analysis, [f"relevance method {analysis.method}"])
        groups += [_relevance_group(analysis, key, item, sources, rel_algorithm) for item in analysis.relevance]
    observer = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=uid(key, "device"), name="HLIP Explorer", manufacturer_name=MANUFACTURER,
            model_name=_lo(f"HLIP {analysis.model_name}")))
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_person_context=None,
                                                     observer_device_context=observer),
        procedure_reported=_procedure(analysis.study), imaging_measurements=groups,
        title=codes.cid7021.ImagingMeasurementReport)
    report[0].ContentSequence.append(_comments([STATEMENT, *notes]))
    evidence = [ds for s in sources or [] for ds in s.datasets]
    from highdicom.coding_schemes import CodingSchemeIdentificationItem

    scheme = CodingSchemeIdentificationItem(
        designator=SCHEME, name="HLIP Explorer findings and prompts", responsible_organization=MANUFACTURER)
    sr = hd.sr.Comprehensive3DSR(
        evidence=evidence or [stand_in_evidence(analysis.study)], content=report[0],
        series_instance_uid=uid(key, "sr-series"), series_number=SR_SERIES_NUMBER,
        sop_instance_uid=uid(key, "sr"), instance_number=1, manufacturer=MANUFACTURER,
        is_complete=True, is_final=False, is_verified=False, record_evidence=bool(evidence),
        series_description=f"HLIP findings - {RESEARCH}", coding_schemes=[scheme],
        manufacturer_model_name=_lo(f"HLIP {analysis.model_name}"), software_versions=_lo(analysis.model_version),
        device_serial_number=analysis.fingerprint[:16])
    if not evidence and "CurrentRequestedProcedureEvidenceSequence" in sr:
        del sr.CurrentRequestedProcedureEvidenceSequence  # highdicom lists the stand-in: no image was used
    return sr
