"""Delayed jobs and cron: the scheduler, its leader lease, cron expressions."""
