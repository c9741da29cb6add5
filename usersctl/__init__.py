"""usersctl: administer the users of an application's database."""

__version__ = "0.1.0"
