"""The kinds of job, one module each (a ``KIND = JobKind(...)``): see `tlviz.jobs.registry`."""
