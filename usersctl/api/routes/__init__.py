"""One module per resource: users, auth (login), health."""
