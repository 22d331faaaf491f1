"""Accounts' typed errors; shared.errors renders them as problem+json."""
from shared.errors import Conflict, InvalidRequest, NotFound, RetryLater, ServiceUnavailable, Unauthorized


class EmailTaken(Conflict):
    slug, title = "email-taken", "Cannot register this email"


class InvalidCredentials(Unauthorized):
    slug, title = "invalid-credentials", "Email or password is incorrect"


class AccountNotFound(NotFound):
    slug, title = "account-not-found", "No such account"


class SignInBusy(ServiceUnavailable):
    slug, title = "sign-in-busy", "Too many sign-ins at once"
    default_detail = "Too many people are signing in right now; try again in a moment."


class RegistrationBusy(ServiceUnavailable):
    """Registrations already hold every hashing slot they may (half of them, so that sign-ins
    always keep the rest)."""

    slug, title = "registration-busy", "Too many registrations at once"
    default_detail = "Too many people are registering right now; try again in a moment."


class SigningUnavailable(ServiceUnavailable):
    """The signing key cannot be decrypted (a KEK is missing); the log says which key and why."""

    slug, title = "signing-unavailable", "Tokens cannot be issued right now"


class SignInThrottled(RetryLater):
    """Too many failed sign-ins for this account or from this client; says which neither."""

    status, slug, title = 429, "too-many-sign-in-attempts", "Too many sign-in attempts"

    def __init__(self, retry_after: int):
        super().__init__("Too many failed sign-in attempts; wait before trying again.", retry_after=retry_after)


class RegistrationThrottled(RetryLater):
    """Too many registrations from this client (an email already taken counts too)."""

    status, slug, title = 429, "too-many-registrations", "Too many registrations"

    def __init__(self, retry_after: int):
        super().__init__("Too many registrations from this address; wait before trying again.", retry_after=retry_after)


class InvalidRefreshToken(Unauthorized):
    slug, title = "invalid-refresh-token", "Refresh token not accepted"


class InviteNotUsable(InvalidRequest):
    """One answer for an unknown, expired, used-up or someone else's code, so codes cannot be probed."""

    slug, title = "invite-not-usable", "Invite code cannot be used"

    def __init__(self, field: str = "code"):
        super().__init__("This invite code cannot be used.", errors={field: ["This invite code cannot be used."]})


class AddressNotFound(NotFound):
    slug, title = "address-not-found", "No such address"


class TooManyAddresses(Conflict):
    slug, title = "too-many-addresses", "Too many saved addresses"
