"""A loopback "fake cloud" quantum provider: it stands in for IBM's or AWS's clouds, which the
tests and demos cannot reach, and behaves like one (API keys and short-lived single-use tokens,
idempotent job creation, queues, noisy results from snapshot backends, prices, a usage meter,
and faults on demand).

Run it with `python -m jupyter_qguard.fakecloud --port 0 --api-key-file F`; the wire format is
documented in `jupyter_qguard.fakecloud.server`.
"""
