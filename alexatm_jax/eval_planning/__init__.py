"""Estimates of how long an evaluation suite takes on a TPU slice, per layout."""
