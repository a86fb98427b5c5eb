"""Spark batch jobs (spark-submit entry points)."""
