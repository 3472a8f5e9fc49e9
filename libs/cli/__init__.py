"""The `helpdesk` command: the composition root that knows every process of the platform."""
