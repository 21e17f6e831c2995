"""The commands of the ``substantial`` CLI, one module per group of jobs (private)."""
