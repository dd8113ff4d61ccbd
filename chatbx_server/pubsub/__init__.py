"""Publish-Subscribe (XEP-0060): the engine shared by PEP (XEP-0163, every
account's bare JID) and the ``pubsub.<domain>`` service.

- ``protocol.py``: namespaces, errors, request parsing, event messages;
- ``config.py``: node configuration and publish-options forms;
- ``access.py``: access models;
- ``engine.py``: the operations on storage with the limits;
- ``pep.py``: the PEP feature (notifications by entity capabilities);
- ``service.py``: the pubsub.<domain> service.
"""
