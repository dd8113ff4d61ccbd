"""Many chatbx nodes sharing PostgreSQL and Redis (DESIGN.md, "Cluster").

``[cluster]`` in the config makes this process a node: ``server.sessions``
becomes the cluster-aware view (directory.py) and node.py keeps the
directory, the heartbeat and the inbox in Redis.
"""

from chatbx_server.cluster.node import Cluster

__all__ = ["Cluster"]
