"""The process runtime: supervision of worker processes and services, env files."""
