"""What every actor runs on: settings, health, logs, backoff, restart supervision, signals."""
