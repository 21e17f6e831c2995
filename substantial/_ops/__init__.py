"""Operator views over a backend: listing, showing, checking and collecting runs."""
