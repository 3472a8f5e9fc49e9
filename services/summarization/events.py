"""Events the summarization service publishes (none yet) and its stream."""

SERVICE = "summarization"
STREAM = "SUMMARIZATION"
