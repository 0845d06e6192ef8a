"""jobctl's shared core: task kinds, input parsing, encryption, Redis layout and batch state.

Nothing here imports `producer` (the submitting side) or `worker` (the draining side):
both build on this package, and so does `modal_worker.py`.
"""
