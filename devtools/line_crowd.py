"""A big line's crowd made straight in checkout's database, as a join makes its tickets (arrival
numbers from the sequence `line_arrivals`): registering and joining that many accounts would take
minutes. For the integration tests and `make bench-line --crowd N`."""

# parameters: `d`, the drop whose line the tickets join; `n`, how many (buyers crowd-1 .. crowd-n)
CROWD = ("INSERT INTO line_tickets (id, drop_id, buyer_id, arrival) SELECT gen_random_uuid(), :d, 'crowd-' || n, "
         "nextval('line_arrivals') FROM generate_series(1, :n) AS n")
