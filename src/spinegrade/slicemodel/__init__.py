"""One machinery for models learned from real labelled slices: a 2D landmark localiser and a crop grader.

A task (`task.py`) says what differs: its folder's reader, the localiser's channels, the grader's classes,
how predictions are written and scored. Two tasks: `foramina` (real Sagittal T1 slices with foramen points
and severities) and `canal` (real mid-sagittal T2 slices with disc boxes and yes/no canal stenosis boxes).
Modules, in the order a slice goes through: `data` (the slice set, the letterbox frame that undoes a stored
image's stretch), the tasks' readers (`foramina`, `canal`), `localizer` (one heatmap per channel, trained
only where a channel is labelled), `grader` (a crop around a point, told level and side), `model` (a trained
pair loaded for inference, with calibration, test-time augmentation and fold ensembles), `pipeline` (train and
evaluate commands), `dicom` (the same models on a DICOM study's sagittal series).
"""
