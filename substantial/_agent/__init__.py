"""The agent: polling, claiming, waking runs, running steps, recording state."""
