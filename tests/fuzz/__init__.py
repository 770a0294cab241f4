"""Deterministic fuzzing of the collector's inputs: mutated real JT/T 808 frames (the codec and
the gateway over TCP) and mutated HTTP bodies (detector and feature-state inputs).

``python -m tests.fuzz.run --help`` runs it at any size (``make fuzz``: 10⁶ frames); the test
suite runs a 10⁴-frame slice through the same functions.
"""
