"""Multi-User Chat (XEP-0045) on ``conference.<domain>``; see service.py.

One file per concern, as Prosody's ``plugins/muc/*.lib.lua``: the service
and its routing (service.py), a room's presence and messages (room.py),
occupants, roles and affiliations (occupants.py), muc#admin and muc#owner
requests (admin.py), configuration forms (config.py), history on join
(history.py), the archive with retraction and moderation (archive.py).
"""
