"""
The benchmark: speed per step, per run, per resume and per agent, each next to the raw
rate of the backend it runs on (the *floor*: one create-if-absent from the same client
library, measured in the same run). ``python -m bench --help``; results in RESULTS.md.
"""
