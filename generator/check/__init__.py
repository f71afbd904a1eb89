"""Checks against the served model: the client, load tests, calibration of the capacity model, the demo."""
