"""Versioned message schemas (JSON Schema and Avro, generated from frozen records) and their codecs."""
