"""The orchestrators above the stages: the study pipeline's plan and trainer, and the slice-grader trainer.

`plan.PipelinePlan` says everything a study-pipeline run computes; `study.train_study_pipeline` trains it;
`slices.train_slices` trains a slice grader from a PNG index. Both write runs through the engine in `train/`.
"""
