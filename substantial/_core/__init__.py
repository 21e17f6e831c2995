"""Values every layer may use: constants, run ids, statuses, clocks, logging context."""
