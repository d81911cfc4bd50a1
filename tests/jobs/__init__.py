"""Job functions the RQ tests enqueue; workers import them as `tests.jobs.*`."""
