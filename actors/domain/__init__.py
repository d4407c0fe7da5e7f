"""Pure values of the domain: the event, its validation, the messages actors exchange, trace context."""
