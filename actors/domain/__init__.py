"""Pure values of the domain: the event, its validation, the messages, the trace context."""
