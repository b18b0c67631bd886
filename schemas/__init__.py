"""Declarations shared by every stage: Arrow schemas, view specs, statuses and errors."""
