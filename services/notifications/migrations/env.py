from shared.migrate import run_migrations

run_migrations()
