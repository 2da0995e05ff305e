"""The email gateway's benchmarks: ``python -m bench.email`` (against bare aiosmtpd),
``python -m bench.email.stages`` and ``python -m bench.email.compare`` (bench/RESULTS.md, Email)."""
