"""Inventory's processes: `python -m services.inventory relay | consumer | sweeper | migrate`."""
from services.inventory import sweeper
from services.inventory.bootstrap import bootstrap
from shared import processes

processes.main(bootstrap, "inventory", extra={
    "sweeper": processes.Process("give the stock of expired, unpaid holds back", lambda root, args: sweeper.run(root)),
})
