"""The replay engine: workflows, the Context, commands, and the run's execution."""
