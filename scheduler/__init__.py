"""Beat: the schedule and its single active leader."""
