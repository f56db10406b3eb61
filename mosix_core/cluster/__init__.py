"""The cluster view: gossip (what each node knows of the others), the node's resources
and status lines, its process table, and the local cluster on loopback (moscluster)."""
