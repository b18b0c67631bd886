"""Labels: cleaning and parsing per dataset, engines, and the linear recalibration."""
