-- The reservation-and-order transaction of one order, for pgbench (see pgbench.py).
-- Variables from the command line: :drop (the drop's id), :last_row (its last stock row).
\set row random(0, :last_row)
\set n random(1, 9000000000000000000)
BEGIN;
UPDATE drop_stock_shards SET available = available - 1
 WHERE drop_id = ':drop'::uuid AND shard = :row AND available >= 1;
INSERT INTO reservations (order_id, drop_id, buyer_id, quantity, status, hold_expires_at)
VALUES (md5(:n || '-' || :client_id)::uuid, ':drop'::uuid, 'buyer-' || :n, 1, 'held', now() + interval '15 minutes');
INSERT INTO orders (id, buyer_id, buyer_email, drop_id, sku, product_name, quantity, unit_amount, currency,
                    shipping_address, status, hold_expires_at, approval_url, address_key)
VALUES (md5(:n || '-' || :client_id)::uuid, 'buyer-' || :n, 'buyer-' || :n || '@example.com', ':drop'::uuid,
        'PGBENCH-1', 'OnePlus One 64GB Sandstone Black', 1, 29900, 'CAD',
        '{"name": "Alex Tremblay", "street_address": "24 Sussex Drive", "city": "Ottawa", "postal_code": "K1A 0B1", "country_area": "ON", "country_code": "CA"}',
        'awaiting_payment', now() + interval '15 minutes',
        'http://127.0.0.1:8010/pay/' || md5(:n || '-' || :client_id)::uuid || '?amount=29900&currency=CAD&sig=0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef',
        md5(:n || '-address'));
INSERT INTO outbox (event_id, event_type, envelope, request_id)
VALUES (md5(:n || '-event-' || :client_id)::uuid, 'order.placed',
        jsonb_build_object('id', md5(:n || '-event-' || :client_id)::uuid, 'type', 'order.placed', 'source', 'checkout',
                           'occurred_at', now(), 'correlation_id', md5(:n || '-request'),
                           'data', jsonb_build_object('order_id', md5(:n || '-' || :client_id)::uuid, 'buyer_id', 'buyer-' || :n,
                                                      'drop_id', ':drop'::uuid, 'status', 'awaiting_payment', 'quantity', 1,
                                                      'total', jsonb_build_object('amount', 29900, 'currency', 'CAD'))),
        md5(:n || '-request'));
END;
