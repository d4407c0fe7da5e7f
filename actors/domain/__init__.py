"""Pure values of the domain: the event, its validation, and the messages actors exchange."""
