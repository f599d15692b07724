"""The training engine, below every stage: the loop (`engine.fit`), run configuration (`config`),
self-describing checkpoints (`checkpoint.load_model` rebuilds any trained network), resume and DDP.

What is trained, and on which data, is decided above it (`spinegrade.pipeline`); nothing here imports a stage.
"""
