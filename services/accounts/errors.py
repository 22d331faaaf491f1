"""Accounts' typed errors; shared.errors renders them as problem+json."""
from shared.errors import Conflict, NotFound, ServiceUnavailable, Unauthorized


class EmailTaken(Conflict):
    slug, title = "email-taken", "Cannot register this email"


class InvalidCredentials(Unauthorized):
    slug, title = "invalid-credentials", "Email or password is incorrect"


class AccountNotFound(NotFound):
    slug, title = "account-not-found", "No such account"


class SignInBusy(ServiceUnavailable):
    slug, title = "sign-in-busy", "Too many sign-ins at once"
