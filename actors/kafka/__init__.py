"""The Kafka boundary: the ports the actors see, and the confluent-kafka adapters behind them.

The only package that imports ``confluent_kafka``; importing the package itself (or its
``ports``) does not, so in-memory fakes can implement the ports without loading librdkafka.
"""
