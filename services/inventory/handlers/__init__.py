"""The inventory's operations, each run inside one unit of work, and its event handlers; a caller
imports the module it uses.

- `drops`: products and drops (the admin's side), a drop as a client sees it, and the
  announcements of drops that open or sell out.
- `reservations`: holds on the order path (`POST /reservations`: `reserve`, `take_stock`), and a
  hold's sale or release over HTTP; its docstring has the lock order every transaction keeps.
- `expiry`: the sweeper's release of expired holds, and its loop.
- `events`: the order events the consumer handles (`EVENT_HANDLERS`).

The event handlers, the sweeper and the HTTP sale and release reach reservations and stock
through the repositories on their unit of work (`services/inventory/repository.py`).
"""
