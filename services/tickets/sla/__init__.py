"""SLA: per-tenant policies, business calendars, deadlines and the breach scheduler."""
