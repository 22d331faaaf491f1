"""What accounts accepts and answers, in JSON."""
import unicodedata
from datetime import datetime, timezone

from email_validator import EmailNotValidError
from marshmallow import Schema, ValidationError, fields, post_load, validate, validates, validates_schema

from shared.addresses import MAX_LENGTH as ADDRESS_MAX_LENGTH
from shared.fields import ADDRESS_COUNTRY_CODE, INVITE_TIER, EmailAddress, SCHEDULE_RANGE, email_address
from shared.values import storable
from services.accounts.passwords import MAX_LENGTH, MIN_LENGTH

EMAIL_MAX_LENGTH = 254


def storable_text(value: str) -> None:
    """Refuse what JSON can carry but neither PostgreSQL nor argon2 can take (see
    `shared.values.storable`): the command line's input does not pass `shared.web.load`."""
    if not storable(value):
        raise ValidationError("Must be valid Unicode text without NUL characters.")


class NormalisedEmail(EmailAddress):
    """An account's email address (`shared.fields.email_address`: `Ann@Example.com` and
    `ann@example.com` are one account), and text PostgreSQL can store."""

    def _deserialize(self, value, attr, data, **kwargs):
        storable_text(value if isinstance(value, str) else "")
        return super()._deserialize(value, attr, data, **kwargs)


# NFKC splits Thai's sara am (and Lao's am) in two, though whole is how the vowel is typed and
# stored (สำราญ): kept whole, and its split spelling, which looks the same, refused.
KEPT_WHOLE = {"\u0e4d\u0e32": "\u0e33", "\u0ecd\u0eb2": "\u0eb3"}
REGISTRATION_EMAIL_RULE = ("holds no compatibility characters (full-width letters, ligatures, superscripts, ...): "
                           "Unicode NFKC leaves it as it is, so no account reads the same as another")


def compatibility_folded(text: str) -> str:
    """`text` with compatibility characters folded into their plain forms (NFKC: `ａ` to `a`, `ﬁ`
    to `fi`, `²` to `2`), the letters of `KEPT_WHOLE` kept whole."""
    folded = unicodedata.normalize("NFKC", text)
    for split, whole in KEPT_WHOLE.items():
        folded = folded.replace(split, whole)
    return folded


def plain_characters(email: str) -> None:
    """Refuse an email that compatibility folding would change: `ａｎｎ@example.com` reads as
    `ann@example.com` but is another address, and both could be registered (the stored form is
    only NFC and lower-cased). Only registration refuses them: accounts stored before still sign in."""
    folded = compatibility_folded(email)
    if folded != email:
        raise ValidationError(f"Type this address with ordinary characters, not full-width letters, ligatures or "
                              f"superscripts: as it is, it reads like {folded}.")


class RegistrationSchema(Schema):
    email = NormalisedEmail(required=True, validate=[validate.Length(max=EMAIL_MAX_LENGTH), storable_text, plain_characters])
    password = fields.String(
        required=True,
        load_only=True,
        validate=[
            validate.Length(min=MIN_LENGTH, max=MAX_LENGTH, error=f"Use between {MIN_LENGTH} and {MAX_LENGTH} characters."),
            storable_text,
        ],
    )
    name = fields.String(load_default=None, allow_none=True, validate=[validate.Length(max=200), storable_text])
    invite_code = fields.String(load_default=None, allow_none=True, validate=[validate.Length(max=64), storable_text])


class AccountSchema(Schema):
    id = fields.UUID()
    email = fields.String()
    name = fields.String(allow_none=True)
    role = fields.String()
    tier = fields.String(allow_none=True)


class SessionRequestSchema(Schema):
    # Not checked as an address: any string may be tried, and every miss looks the same.
    email = fields.String(required=True, validate=[validate.Length(max=EMAIL_MAX_LENGTH), storable_text])
    password = fields.String(required=True, load_only=True, validate=[validate.Length(max=MAX_LENGTH), storable_text])

    @post_load
    def _normalise_email(self, data, **kwargs):
        data["email"] = sign_in_email(data["email"])
        # Lower-casing can lengthen it ("İ" becomes two characters), and the sign-in throttle
        # keeps it in a key of bounded length.
        if len(data["email"]) > EMAIL_MAX_LENGTH:
            raise ValidationError(f"Longer than maximum length {EMAIL_MAX_LENGTH}.", "email")
        return data


def sign_in_email(text: str) -> str:
    """The email as registration stored it when it is a valid address; otherwise just trimmed
    and lower-cased, so a miss costs and answers the same as any other."""
    try:
        return email_address(text)
    except EmailNotValidError:
        return text.strip().lower()


class SessionTokensSchema(Schema):
    access_token = fields.String(attribute="token")
    token_type = fields.Constant("Bearer")
    expires_in = fields.Integer(metadata={"description": "seconds the access token is valid"})
    refresh_token = fields.String(metadata={"description": "opaque; works once, exchange it at POST /sessions/refresh"})
    refresh_expires_in = fields.Integer()


class RefreshTokenSchema(Schema):
    refresh_token = fields.String(required=True, load_only=True, validate=[validate.Length(min=1, max=200), storable_text])


class InviteRequestSchema(Schema):
    email = NormalisedEmail(load_default=None, allow_none=True, metadata={"description": "the one person who may redeem it; they are emailed the code"})
    tier = fields.String(required=True, validate=INVITE_TIER)
    max_uses = fields.Integer(load_default=1, strict=True, validate=validate.Range(min=1, max=1_000_000))
    expires_at = fields.AwareDateTime(load_default=None, allow_none=True, validate=SCHEDULE_RANGE)

    @validates("expires_at")
    def _in_the_future(self, value, **kwargs):
        if value is not None and value <= datetime.now(timezone.utc):
            raise ValidationError("Must be in the future.")

    @validates_schema
    def _one_person_one_use(self, data, **kwargs):
        if data.get("email") and data.get("max_uses", 1) != 1:
            raise ValidationError("An invite for one person is single-use.", "max_uses")


class InviteSchema(Schema):
    id = fields.UUID()
    code = fields.Function(lambda invite: "-".join(invite.code[i : i + 4] for i in range(0, len(invite.code), 4)))
    email = fields.String(allow_none=True)
    tier = fields.String()
    max_uses = fields.Integer()
    uses = fields.Integer()
    expires_at = fields.DateTime(allow_none=True)
    created_at = fields.DateTime()


class RedeemInviteSchema(Schema):
    code = fields.String(required=True, validate=[validate.Length(min=1, max=64), storable_text])


def _address_field(name: str, required: bool = False):
    length = validate.Length(min=1 if required else 0, max=ADDRESS_MAX_LENGTH[name])
    if required:
        return fields.String(required=True, validate=length)
    return fields.String(load_default="", validate=length)


class AddressRequestSchema(Schema):
    """A shipping address as the buyer types it; `shared.addresses` then checks it against its
    country's rules and writes it the country's way."""

    name = _address_field("name", required=True)
    street_address = _address_field("street_address", required=True)
    city = _address_field("city")
    city_area = _address_field("city_area")
    sorting_code = _address_field("sorting_code")
    postal_code = _address_field("postal_code")
    country_area = _address_field("country_area")
    country_code = fields.String(required=True, validate=ADDRESS_COUNTRY_CODE)


class AddressSchema(Schema):
    id = fields.UUID()
    name = fields.String()
    street_address = fields.String()
    city = fields.String()
    city_area = fields.String()
    sorting_code = fields.String()
    postal_code = fields.String()
    country_area = fields.String()
    country_code = fields.String()
    created_at = fields.DateTime()


class AddressListSchema(Schema):
    items = fields.List(fields.Nested(AddressSchema))


class ServiceAddressSchema(AddressSchema):
    account_id = fields.UUID()


class JsonWebKeySchema(Schema):
    kty = fields.String()
    crv = fields.String()
    x = fields.String()
    y = fields.String()
    kid = fields.String()
    alg = fields.String()
    use = fields.String()


class KeySetSchema(Schema):
    keys = fields.List(fields.Nested(JsonWebKeySchema))
