"""What accounts accepts and answers, in JSON."""
from marshmallow import Schema, ValidationError, fields, post_load, validate

from services.accounts.passwords import MAX_LENGTH, MIN_LENGTH


def storable_text(value: str) -> None:
    """Refuse what JSON can carry but neither PostgreSQL nor argon2 can take: NUL characters
    and lone surrogates (which have no UTF-8 encoding)."""
    if "\x00" in value:
        raise ValidationError("Must not contain NUL characters.")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValidationError("Must be valid Unicode text.") from None


class NormalisedEmail(fields.Email):
    """An email address, trimmed and lower-cased before it is checked, stored or looked up."""

    def _deserialize(self, value, attr, data, **kwargs):
        return super()._deserialize(value, attr, data, **kwargs).strip().lower()


class RegistrationSchema(Schema):
    email = NormalisedEmail(required=True, validate=[validate.Length(max=254), storable_text])
    password = fields.String(
        required=True,
        load_only=True,
        validate=[
            validate.Length(min=MIN_LENGTH, max=MAX_LENGTH, error=f"Use between {MIN_LENGTH} and {MAX_LENGTH} characters."),
            storable_text,
        ],
    )
    name = fields.String(load_default=None, allow_none=True, validate=[validate.Length(max=200), storable_text])


class AccountSchema(Schema):
    id = fields.UUID()
    email = fields.String()
    name = fields.String(allow_none=True)
    role = fields.String()


class SessionRequestSchema(Schema):
    # Not checked as an address: any string may be tried, and every miss looks the same.
    email = fields.String(required=True, validate=[validate.Length(max=254), storable_text])
    password = fields.String(required=True, load_only=True, validate=[validate.Length(max=MAX_LENGTH), storable_text])

    @post_load
    def _normalise_email(self, data, **kwargs):
        data["email"] = data["email"].strip().lower()
        return data


class AccessTokenSchema(Schema):
    access_token = fields.String(attribute="token")
    token_type = fields.Constant("Bearer")
    expires_in = fields.Integer()


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
