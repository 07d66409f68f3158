"""Cluster control: broker membership under leases, the elected controller, placement."""
