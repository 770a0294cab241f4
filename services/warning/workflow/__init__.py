"""The departments' workflow: users and roles, sessions, actions on warnings, the audit trail.

``roles.py`` says who may see and do what; ``store.py`` persists users, sessions, every warning
message (the live stream's log), actions and the audit trail through ``shared/db``;
``actions.py`` applies an action to a warning (in the engine, the one writer).
"""
