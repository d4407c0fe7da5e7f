"""What the integration tests are built from; the fixtures in tests/integration/conftest.py
only put these together.

- ``waiting``: :func:`~support.waiting.wait_until`, bounded polling that names what it awaited.
- ``brokers``: the session's broker value and brokers a test may pause (one starter per kind).
- ``kafka_tools``: the tests' own producer, reader and admin look-ups, and broker readiness.
- ``services``: the service as a process (spawn, HTTP, logs, stop) and its test settings.
- ``proxy``, ``faults``: a cuttable TCP path to a broker, and the fault-injection values.
- ``events``, ``traffic``: events as another producer writes them; steady POST traffic.
- ``crashing_service``, ``few_descriptors_service``: the service's entry point with one fault
  injected, run as ``python -m tests.support.<name>``.
"""
