"""
The agent, split by job; :class:`substantial.Conductor` composes the parts:

* ``poller``: reads the schedule for due runs and claims them by lease
* ``processor``: one claimed run through one wake-up; failures become hold-offs
* ``leases``: renewing a claimed run's lease while its wake-up runs
* ``holdoffs``, ``health``: runs left alone for a while; store-wide and per-run trouble
* ``wakeup``: one wake-up of one run (read, replay, commit, wrap up); ``drive``: its loop
* ``steps``: one attempt of one step (threads, timeouts, retries); ``step_threads``
* ``endings``: children started, and what a run's end sets off
* ``summary``: the run summary a wake-up leaves
* ``settings``, ``parts``: what the parts share; ``telemetry``: spans and metrics
"""
