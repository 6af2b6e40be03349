"""Experiment entry points (``python -m experiments.NAME``): thin wrappers that
parse arguments, call disco_jax, and print or write reports."""
