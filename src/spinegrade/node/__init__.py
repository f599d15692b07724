"""spinegrade on a DICOM network: a Storage SCP node that grades what a PACS sends it and sends the SR back
(`listen`), its study spool (`spool`), the C-STORE sender (`send`) and DICOMweb pull/push (`dicomweb`).

pynetdicom and dicomweb-client are imported inside the functions that use them.
"""
