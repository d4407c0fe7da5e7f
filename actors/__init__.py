"""User-activity event service: trio actors around a Kafka producer and consumer.

Run it with ``python -m actors``; see ARCHITECTURE.md for how the actors fit together.
"""
