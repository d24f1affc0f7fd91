"""Operator latencies measured on real GPUs (from aiconfigurator-core) and lookups in them."""
