#!/bin/bash
# Runs once, when the data directory is first initialised (docker-entrypoint-initdb.d):
# one role and one database per service; a role may connect to its own database only.
set -euo pipefail
for service in accounts inventory checkout notifications; do
  password_var="$(echo "$service" | tr '[:lower:]' '[:upper:]')_PASSWORD"
  psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname postgres \
    --set=role="$service" --set=db="floodgate_$service" --set=password="${!password_var}" <<'SQL'
CREATE ROLE :"role" LOGIN PASSWORD :'password';
CREATE DATABASE :"db" OWNER :"role";
REVOKE ALL ON DATABASE :"db" FROM PUBLIC;
GRANT CONNECT, TEMPORARY ON DATABASE :"db" TO :"role";
SQL
done
