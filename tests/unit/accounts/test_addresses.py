"""Saved addresses: normalised for their country, private to their buyer, readable by services."""
import pytest

from services.accounts import handlers
from services.accounts.errors import AddressNotFound, TooManyAddresses
from services.accounts.schemas import RegistrationSchema
from shared import auth
from shared.addresses import InvalidAddress
from shared.auth import KeySet, TokenVerifier

OTTAWA = {"name": "Alex Tremblay", "street_address": "24 Sussex Drive", "city": "Ottawa", "postal_code": "k1a0b1",
          "country_area": "Ontario", "country_code": "CA"}


@pytest.fixture
def ann(uow, passwords):
    return handlers.register_account(RegistrationSchema().load({"email": "ann@example.com", "password": "correct horse battery"}), uow, passwords)


@pytest.fixture
def bob(uow, passwords):
    return handlers.register_account(RegistrationSchema().load({"email": "bob@example.com", "password": "correct horse battery"}), uow, passwords)


def test_a_saved_canadian_address_is_stored_the_canadian_way(uow, ann):
    address = handlers.save_address(str(ann.id), OTTAWA, uow)

    assert (address.country_code, address.country_area, address.postal_code) == ("CA", "ON", "K1A 0B1")
    assert handlers.addresses_of(str(ann.id), uow) == [address]


def test_a_refused_address_saves_nothing(uow, ann):
    with pytest.raises(InvalidAddress) as refused:
        handlers.save_address(str(ann.id), dict(OTTAWA, country_code="US", country_area="NY"), uow)

    assert "postal_code" in refused.value.errors
    assert uow.addresses.rows == {}


def test_another_buyers_address_is_not_found_but_services_read_any(uow, ann, bob):
    address = handlers.save_address(str(ann.id), OTTAWA, uow)

    with pytest.raises(AddressNotFound):
        handlers.find_address(str(bob.id), str(address.id), uow)
    with pytest.raises(AddressNotFound):
        handlers.delete_address(str(bob.id), str(address.id), uow)
    with pytest.raises(AddressNotFound):
        handlers.find_address(None, "not-a-uuid", uow)
    assert handlers.find_address(None, str(address.id), uow) is address


def test_a_buyer_keeps_a_bounded_number_of_addresses(uow, ann):
    for _ in range(2):
        handlers.save_address(str(ann.id), OTTAWA, uow, max_addresses=2)

    with pytest.raises(TooManyAddresses):
        handlers.save_address(str(ann.id), OTTAWA, uow, max_addresses=2)


def test_the_account_is_locked_before_its_addresses_are_counted(uow, ann):
    # Two saves at once would otherwise both count one under the limit and both be kept.
    locked_when_counted = []
    count = uow.addresses.of
    uow.addresses.of = lambda account_id: (locked_when_counted.append(list(uow.accounts.locked)), count(account_id))[1]

    handlers.save_address(str(ann.id), OTTAWA, uow)

    assert locked_when_counted == [[ann.id]]


def test_over_http_addresses_are_per_buyer_and_the_service_lookup_takes_only_the_service_key(app, client, uow, ann, bob):
    keks = app.extensions["floodgate"].key_encryption
    auth.init_app(app, TokenVerifier(KeySet("unused", fetch=lambda _url: handlers.published_keys(uow, keks)), "floodgate-accounts", "floodgate"), "service-key")

    def bearer(email):
        token = client.post("/sessions", json={"email": email, "password": "correct horse battery"}).get_json()["access_token"]
        return {"Authorization": f"Bearer {token}"}

    ann_auth, bob_auth = bearer("ann@example.com"), bearer("bob@example.com")
    saved = client.post("/accounts/me/addresses", headers=ann_auth, json=OTTAWA)
    assert saved.status_code == 201
    address_id = saved.get_json()["id"]

    assert client.get(f"/accounts/me/addresses/{address_id}", headers=ann_auth).get_json()["postal_code"] == "K1A 0B1"
    assert client.get(f"/accounts/me/addresses/{address_id}", headers=bob_auth).status_code == 404
    assert client.get("/accounts/me/addresses", headers=bob_auth).get_json() == {"items": []}
    assert client.get(f"/internal/addresses/{address_id}", headers=ann_auth).status_code == 401  # a buyer token is not a service
    service = client.get(f"/internal/addresses/{address_id}", headers={"X-Service-Key": "service-key"})
    assert service.status_code == 200 and service.get_json()["account_id"] == str(ann.id)

    bad = client.post("/accounts/me/addresses", headers=ann_auth, json=dict(OTTAWA, country_code="US", country_area="NY"))
    assert bad.status_code == 422 and bad.mimetype == "application/problem+json"
    assert "postal_code" in bad.get_json()["errors"]
    assert client.post("/accounts/me/addresses", headers=ann_auth, json=dict(OTTAWA, extra="x")).status_code == 422

    assert client.delete(f"/accounts/me/addresses/{address_id}", headers=ann_auth).status_code == 204
    assert client.get(f"/accounts/me/addresses/{address_id}", headers=ann_auth).status_code == 404
