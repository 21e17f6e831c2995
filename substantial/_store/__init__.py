"""The run layout on top of a backend: keys, segments, inbox, summaries, leases, schedule."""
