"""Events the notifications service publishes (none yet) and its stream."""

SERVICE = "notifications"
STREAM = "NOTIFICATIONS"
