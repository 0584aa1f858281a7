"""The only mutable state: the connection, the jobs, the events and the timer tick."""
