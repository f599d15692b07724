"""Neural foramina on real Sagittal T1 slices: point-labelled slice data, a 2D foramen localiser, a crop grader.

The layout it learns from is `slices.csv` + `points.csv` + images (the real `rsna2024_sagT1_foramina_vbs2004`
set): one slice per row of `slices.csv` (its original DICOM matrix `rows x cols`), one foramen per row of
`points.csv` (condition, level, and as truth only: severity, x, y). Modules, in the order a slice goes through:
`data` (reading, validation, the letterbox frame that undoes the stretch), `localizer` (one heatmap per
level, trained only where a level is labelled), `grader` (a crop around each foramen, told level and side),
`model` (a trained pair loaded for inference, with calibration, test-time augmentation and fold ensembles),
`pipeline` (train and evaluate commands), `dicom` (the same model on a DICOM study's Sagittal T1 series).
"""
