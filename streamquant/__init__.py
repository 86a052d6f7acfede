"""Wiring only: the settings object, the `streamquant` CLI and the local dev stack."""
