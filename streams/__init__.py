"""The Kafka layer: settings, topic catalog, batch source, sink and dead letters. Imports only `schemas`."""
