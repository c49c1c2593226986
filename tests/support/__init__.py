"""Helpers shared by test modules: a test module imports from here, from
conftest and the pod/server scripts beside it, never from another test
module (tests/test_layers.py checks), so each one runs and changes alone."""
