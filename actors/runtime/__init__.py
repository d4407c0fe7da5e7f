"""What every actor runs on: settings, health, metrics, logs, backoff, supervision, signals."""
