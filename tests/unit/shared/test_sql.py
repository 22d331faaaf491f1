"""shared.sql: a statement's `:name` parameters become psycopg's, and nothing else changes."""
from shared.sql import Statement


def test_named_parameters_become_psycopg_placeholders_once_each_place_they_appear():
    statement = Statement("UPDATE t SET n = n + :q WHERE id = :id AND n + :q <= :limit")
    assert statement._driver_sql == "UPDATE t SET n = n + %(q)s WHERE id = %(id)s AND n + %(q)s <= %(limit)s"


def test_casts_and_percent_signs_are_left_as_sql():
    statement = Statement("SELECT :at::timestamptz, 'a:b', x::uuid FROM t WHERE name LIKE '5%'")
    assert statement._driver_sql == "SELECT %(at)s::timestamptz, 'a:b', x::uuid FROM t WHERE name LIKE '5%%'"


def test_whitespace_is_folded_for_logs_and_spans():
    assert Statement("""
        SELECT 1
        FROM   t
    """).sql == "SELECT 1 FROM t"
