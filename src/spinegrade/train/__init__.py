"""Training: the shared engine (loop, checkpoints, resume, distributed) and the slice-grader run.

`engine.fit` trains any model given a task; `slices.train_slices` is `spinegrade train`;
`checkpoint.load_model` rebuilds a trained network from its run folder.
"""
