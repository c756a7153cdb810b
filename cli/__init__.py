"""The operator CLI, ``mjhook``."""
