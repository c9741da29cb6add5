"""The HTTP front end (`usersctl serve`, extra `usersctl[server]`): FastAPI over the same
crud layer, transaction, audit trail and error table (usersctl.service) as the CLI.

Nothing here is imported by the CLI until `usersctl serve` runs.
"""
