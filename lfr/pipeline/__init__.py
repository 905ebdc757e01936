"""The pipeline of one node: camera, detector and matcher actors, and the wiring between them.

camera (one per source) -> detector (one per camera) -> matcher (one) -> notifiers (one each).
"""
