"""
The replay engine: workflows, the Context, commands, and the run's execution; the
docstring of :mod:`substantial._engine.replay` maps its parts.
"""
