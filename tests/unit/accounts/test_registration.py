import pytest
from marshmallow import ValidationError

from services.accounts import handlers
from services.accounts.errors import EmailTaken
from services.accounts.schemas import RegistrationSchema


def register(uow, passwords, **body):
    return handlers.register_account(RegistrationSchema().load(body), uow, passwords)


def test_a_buyer_registers_with_a_normalised_email_and_the_registration_is_announced(uow, passwords):
    account = register(uow, passwords, email="  Ann.Lee@Example.COM ", password="correct horse battery", name="Ann")

    assert (account.email, account.name, account.role, account.tier) == ("ann.lee@example.com", "Ann", "buyer", None)
    assert uow.published == [("account.registered", {"account_id": str(account.id), "email": "ann.lee@example.com", "name": "Ann"})]


def test_the_password_is_stored_as_an_argon2id_hash_at_owasp_parameters(uow, passwords):
    account = register(uow, passwords, email="ann@example.com", password="correct horse battery")

    assert "correct horse battery" not in account.password_hash
    assert account.password_hash.startswith("$argon2id$v=19$m=19456,t=2,p=1$")
    assert passwords.verify(account.password_hash, "correct horse battery")


def test_an_email_registered_in_another_case_is_taken_and_nothing_is_announced(uow, passwords):
    register(uow, passwords, email="ann@example.com", password="correct horse battery")
    uow.published.clear()

    with pytest.raises(EmailTaken) as taken:
        register(uow, passwords, email="ANN@example.com", password="another good password")

    assert taken.value.status == 409
    assert "exist" not in taken.value.detail.lower()  # generic: does not confirm who is registered
    assert uow.published == []


@pytest.mark.parametrize("password", ["", "123456789", "x" * 1025])
def test_passwords_shorter_than_ten_or_absurdly_long_are_refused(password):
    with pytest.raises(ValidationError) as refused:
        RegistrationSchema().load({"email": "ann@example.com", "password": password})

    assert list(refused.value.messages) == ["password"]


def test_a_ten_character_password_is_enough():
    assert RegistrationSchema().load({"email": "ann@example.com", "password": "0123456789"})["password"] == "0123456789"


@pytest.mark.parametrize(
    "body, field",
    [
        ({"email": "not-an-address", "password": "0123456789"}, "email"),
        ({"email": "ann@example.com"}, "password"),
        ({"email": "ann@example.com", "password": "0123456789", "name": "A\x00"}, "name"),
        ({"email": "ann@example.com", "password": "\ud800" * 10}, "password"),
        ({"email": 5, "password": "0123456789"}, "email"),
    ],
)
def test_bad_registrations_name_the_field_at_fault(body, field):
    with pytest.raises(ValidationError) as refused:
        RegistrationSchema().load(body)

    assert field in refused.value.messages


def test_over_http_a_short_password_is_a_422_problem_and_nothing_is_created(client, uow):
    response = client.post("/accounts", json={"email": "ann@example.com", "password": "short"})

    assert response.status_code == 422
    assert response.mimetype == "application/problem+json"
    assert "password" in response.get_json()["errors"]
    assert uow.accounts.rows == {} and uow.published == []


def test_over_http_registration_answers_201_with_the_account_but_never_the_password(client, uow):
    response = client.post("/accounts", json={"email": "Ann@Example.com", "password": "correct horse battery"})

    assert response.status_code == 201
    body = response.get_json()
    assert set(body) == {"id", "email", "name", "role", "tier"}
    assert (body["email"], body["role"]) == ("ann@example.com", "buyer")
    assert uow.committed


def test_over_http_a_duplicate_email_is_a_409_problem(client, uow):
    client.post("/accounts", json={"email": "ann@example.com", "password": "correct horse battery"})

    response = client.post("/accounts", json={"email": "ANN@example.com", "password": "correct horse battery"})

    assert response.status_code == 409
    assert response.get_json()["type"].endswith("/email-taken")


@pytest.mark.parametrize("typed, kept", [
    ("Ann@Example.COM", "ann@example.com"),
    ("josé@example.com", "josé@example.com"),
    ("राम@example.com", "राम@example.com"),
    ("สมศรี@example.com", "สมศรี@example.com"),
    # lower-cased as every account was stored (İ becomes an i and a combining dot), and mailable
    ("İlker@Example.com", "i̇lker@example.com"),
    ("ann@BÜCHER.test", "ann@bücher.test"),
])
def test_every_address_an_account_is_made_with_is_one_its_emails_can_be_sent_to(typed, kept):
    from services.notifications.schemas import AccountSchema, OrderSchema

    email = RegistrationSchema().load({"email": typed, "password": "correct horse battery"})["email"]

    assert email == kept
    assert AccountSchema().load({"account_id": "a-1", "email": email})["email"] == email
    assert "buyer_email" not in OrderSchema().validate({"buyer_email": email}, partial=True)


@pytest.mark.parametrize("typed", [
    "ａｎｎ@example.com",  # full-width letters
    "ﬁona@example.com",  # a ligature
    "ann²@example.com",  # a superscript
    "ｊｏｓé@example.com",
    "ส\u0e4d\u0e32ราญ@example.com",  # Thai sara am typed in two parts: reads as the one below
])
def test_an_email_that_reads_as_another_once_compatibility_characters_are_folded_cannot_be_registered(typed):
    with pytest.raises(ValidationError) as refused:
        RegistrationSchema().load({"email": typed, "password": "correct horse battery"})

    assert list(refused.value.messages) == ["email"]
    assert "full-width" in " ".join(refused.value.messages["email"])


@pytest.mark.parametrize("typed", ["สำราญ@example.com", "ຄຳ@example.com", "i̇lker@example.com", "straße@example.com"])
def test_letters_typed_whole_in_their_own_script_are_still_registered(typed):
    # NFKC splits Thai's sara am and Lao's am in two, though whole is how they are typed.
    assert RegistrationSchema().load({"email": typed, "password": "correct horse battery"})["email"] == typed


def test_over_http_a_full_width_look_alike_of_a_registered_email_is_a_422_on_email(client, uow):
    assert client.post("/accounts", json={"email": "ann@example.com", "password": "correct horse battery"}).status_code == 201

    look_alike = client.post("/accounts", json={"email": "ａｎｎ@example.com", "password": "correct horse battery"})

    assert look_alike.status_code == 422 and look_alike.mimetype == "application/problem+json"
    assert list(look_alike.get_json()["errors"]) == ["email"]
    assert [account.email for account in uow.accounts.rows.values()] == ["ann@example.com"]


def test_an_account_registered_before_with_a_full_width_email_still_signs_in(uow, passwords, issuer):
    from services.accounts.schemas import SessionRequestSchema

    earlier = register(uow, passwords, email="ann@example.com", password="correct horse battery")
    earlier.email = "ａｎｎ@example.com"  # as registration stored it before such emails were refused

    signed_in = handlers.open_session(SessionRequestSchema().load({"email": "ａｎｎ@example.com", "password": "correct horse battery"}),
                                      uow, passwords, issuer)

    assert signed_in.token
