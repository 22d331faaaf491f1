"""The test client itself: a request whose kept-alive connection the server reset unread is sent
again (the race that once failed CI: gunicorn closing an idle connection as a request arrived)."""
import socket
import struct
import threading

import pytest
import requests

from devtools.client import session


def _server_that_resets_its_first_connection(answers: int):
    listener = socket.create_server(("127.0.0.1", 0))
    requests_read: list[bytes] = []

    def serve():
        with listener:
            first, _ = listener.accept()
            first.recv(1)  # the request has arrived; the rest stays unread, as in gunicorn's race
            first.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            first.close()  # unread data: the kernel resets the connection
            for _ in range(answers):
                connection, _ = listener.accept()
                with connection:
                    requests_read.append(connection.recv(65536).split(b"\r\n", 1)[0])
                    connection.sendall(b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")

    threading.Thread(target=serve, daemon=True).start()
    return f"http://127.0.0.1:{listener.getsockname()[1]}", requests_read


def test_a_reset_connection_is_retried_once_on_a_fresh_one():
    url, seen = _server_that_resets_its_first_connection(answers=1)
    answer = session().post(url + "/accounts", json={"email": "a@example.com"}, timeout=5)
    assert answer.status_code == 201
    assert seen == [b"POST /accounts HTTP/1.1"]


def test_a_plain_session_fails_on_the_same_reset():
    """The race is real: without the retry the same exchange fails as CI did."""
    url, _ = _server_that_resets_its_first_connection(answers=0)
    with pytest.raises(requests.ConnectionError):
        requests.Session().post(url + "/accounts", json={"email": "a@example.com"}, timeout=5)
