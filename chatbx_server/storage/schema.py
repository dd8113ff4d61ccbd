"""Every table chatbx stores, in SQLAlchemy Core.

This is the target the Alembic revisions in ``migrations/versions`` must
produce (a test compares them). Types are portable between SQLite and
PostgreSQL; timestamps are Unix seconds in a double so both backends store
them the same way. Constraint names come from the naming convention so later
batch migrations on SQLite can refer to them.

RFC 6121 (roster, subscriptions), XEP-0237 (roster versioning), XEP-0160
(offline messages), RFC 5802 / RFC 7677 (SCRAM credentials), XEP-0363 (uploads),
XEP-0045 / XEP-0313 (group chat rooms, affiliations and their archive), XEP-0313 /
XEP-0441 / XEP-0431 (message archives, their preferences, full-text search),
XEP-0191 (block lists), XEP-0377 (spam reports), XEP-0401 (invites), XEP-0158
(CAPTCHA challenges),
XEP-0484 (FAST tokens), XEP-0357 (push registrations).

The archive's full-text index is not a Table: an FTS5 virtual table, its
progress row and a trigger on SQLite, a GIN expression index on PostgreSQL. They are created
by DDL attached to ``archive_messages`` (so ``metadata.create_all`` makes
them too) and by the migration; :func:`include_object` tells Alembic's
comparison to leave them out (see ``storage/archive.py`` for the design).
"""

from __future__ import annotations

import sqlalchemy as sa

__all__ = [
    "SEARCH_OBJECTS",
    "archive_messages",
    "archive_prefs",
    "fast_tokens",
    "include_object",
    "blocklist_items",
    "metadata",
    "muc_affiliations",
    "muc_archive",
    "muc_rooms",
    "offline_messages",
    "push_registrations",
    "roster_items",
    "roster_versions",
    "scram_credentials",
    "server_secrets",
    "spam_reports",
    "subscription_requests",
    "uploads",
    "captcha_challenges",
    "invites",
    "tombstones",
    "users",
    "pubsub_nodes",
    "pubsub_items",
    "pubsub_affiliations",
    "pubsub_subscriptions",
    "entity_caps",
    "vcards",
    "private_storage",
]

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

metadata = sa.MetaData(naming_convention=NAMING_CONVENTION)

# Bare JID: localpart (1023 bytes) + '@' + domainpart (1023 bytes), RFC 7622 §3.
BARE_JID_LENGTH = 2047
#: a full JID adds '/' + resourcepart (1023 bytes)
FULL_JID_LENGTH = 3071
PART_LENGTH = 1023
# Full JID: bare JID + '/' + resourcepart (1023 bytes).
FULL_JID_LENGTH = 3071

#: 64-bit ids on PostgreSQL; SQLite only auto-increments INTEGER PRIMARY KEY.
BigIntId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def _user_fk() -> sa.Column:
    return sa.Column(
        "user_id",
        sa.Integer,
        sa.ForeignKey("users.id", ondelete="CASCADE"),
        nullable=False,
        comment="owning local account; rows go when the account is deleted",
    )


users = sa.Table(
    "users",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("username", sa.String(PART_LENGTH), nullable=False,
              comment="PRECIS-prepared localpart"),
    sa.Column("domain", sa.String(PART_LENGTH), nullable=False,
              comment="hosted domain the account belongs to"),
    sa.Column("created_at", sa.Double, nullable=False, comment="Unix time, seconds"),
    sa.Column("disabled_at", sa.Double, nullable=True,
              comment="Unix time the account was disabled; NULL = enabled"),
    sa.Column("last_login", sa.Double, nullable=True,
              comment="Unix time of the last successful SASL login"),
    sa.Column("delete_at", sa.Double, nullable=True,
              comment="removal requested: the data goes at this Unix time unless the "
                      "user logs in before (grace period); NULL = none"),
    sa.Column("admin", sa.Boolean, nullable=False, server_default=sa.false(),
              comment="made an admin by an admin invite (besides config 'admins')"),
    sa.Column("self_registered", sa.Boolean, nullable=False, server_default=sa.false(),
              comment="created by its user (in-band or web sign-up), not by an operator: "
                      "the new-account limits apply"),
    sa.UniqueConstraint("username", "domain"),
    sa.Index("ix_users_disabled_at", "disabled_at"),
    sa.Index("ix_users_delete_at", "delete_at"),
)

scram_credentials = sa.Table(
    "scram_credentials",
    metadata,
    _user_fk(),
    sa.Column("mechanism", sa.String(16), nullable=False,
              comment="hash function: 'SHA-1' or 'SHA-256'"),
    sa.Column("salt", sa.LargeBinary, nullable=False),
    sa.Column("iterations", sa.Integer, nullable=False, comment="PBKDF2 iteration count"),
    sa.Column("stored_key", sa.LargeBinary, nullable=False,
              comment="H(ClientKey), RFC 5802; the password is never stored"),
    sa.Column("server_key", sa.LargeBinary, nullable=False,
              comment="HMAC(SaltedPassword, 'Server Key'), RFC 5802"),
    sa.PrimaryKeyConstraint("user_id", "mechanism"),
    sa.CheckConstraint("mechanism IN ('SHA-1', 'SHA-256')", name="mechanism"),
)

roster_items = sa.Table(
    "roster_items",
    metadata,
    _user_fk(),
    sa.Column("contact", sa.String(BARE_JID_LENGTH), nullable=False,
              comment="the contact's bare JID"),
    sa.Column("name", sa.String(PART_LENGTH), nullable=True,
              comment="handle the user gave the contact"),
    sa.Column("subscription", sa.String(4), nullable=False, server_default="none",
              comment="RFC 6121 state: none | to | from | both"),
    sa.Column("ask", sa.Boolean, nullable=False, server_default=sa.false(),
              comment="outbound subscription request pending (ask='subscribe')"),
    sa.Column("approved", sa.Boolean, nullable=False, server_default=sa.false(),
              comment="inbound subscription pre-approved, RFC 6121 §3.4"),
    sa.Column("groups", sa.Text, nullable=False, server_default="[]",
              comment="JSON list of group names"),
    sa.PrimaryKeyConstraint("user_id", "contact"),
    sa.CheckConstraint("subscription IN ('none', 'to', 'from', 'both')", name="subscription"),
)

roster_versions = sa.Table(
    "roster_versions",
    metadata,
    sa.Column("user_id", sa.Integer, sa.ForeignKey("users.id", ondelete="CASCADE"),
              primary_key=True),
    sa.Column("version", sa.Integer, nullable=False, server_default="0",
              comment="XEP-0237 version; bumped on every roster change"),
)

subscription_requests = sa.Table(
    "subscription_requests",
    metadata,
    _user_fk(),
    sa.Column("contact", sa.String(BARE_JID_LENGTH), nullable=False,
              comment="bare JID that asked to subscribe to the user"),
    sa.Column("status", sa.Text, nullable=True,
              comment="the <status/> text of the request, if any"),
    sa.Column("created_at", sa.Double, nullable=False, comment="Unix time, seconds"),
    sa.PrimaryKeyConstraint("user_id", "contact"),
    comment="inbound subscription requests awaiting the user (RFC 6121 §3.1.3)",
)

offline_messages = sa.Table(
    "offline_messages",
    metadata,
    sa.Column("id", BigIntId, primary_key=True, autoincrement=True,
              comment="also the delivery order"),
    _user_fk(),
    sa.Column("stanza", sa.Text, nullable=False, comment="serialized XML of the stanza"),
    sa.Column("created_at", sa.Double, nullable=False,
              comment="Unix time the server accepted it (for XEP-0203 delay)"),
    sa.Column("stanza_bytes", sa.Integer, nullable=False,
              comment="UTF-8 length of stanza; summed for the per-account byte cap"),
    sa.Index("ix_offline_messages_user_id", "user_id"),
)

server_secrets = sa.Table(
    "server_secrets",
    metadata,
    sa.Column("name", sa.String(64), nullable=False,
              comment="what the secret is for, e.g. 'scram-decoy'"),
    sa.Column("value", sa.LargeBinary, nullable=False,
              comment="random bytes, generated once and shared by every node"),
    sa.PrimaryKeyConstraint("name"),
    comment="per-installation secrets (storage/secrets.py)",
)

uploads = sa.Table(
    "uploads",
    metadata,
    sa.Column("slot", sa.String(32), nullable=False,
              comment="random hex id: the file's URL path and on-disk name"),
    sa.Column("uploader", sa.String(BARE_JID_LENGTH), nullable=False,
              comment="bare JID that requested the slot (no FK: files outlive accounts "
                      "until they expire)"),
    sa.Column("filename", sa.String(255), nullable=False,
              comment="the name the client gave, shown in the URL and Content-Disposition"),
    sa.Column("size", sa.BigInteger, nullable=False, comment="bytes, fixed at slot request"),
    sa.Column("content_type", sa.String(255), nullable=False,
              comment="MIME type served on GET"),
    sa.Column("created_at", sa.Double, nullable=False,
              comment="Unix time of the slot request (daily quota)"),
    sa.Column("completed_at", sa.Double, nullable=True,
              comment="Unix time the PUT finished; NULL = slot not used (yet)"),
    sa.Column("expires_at", sa.Double, nullable=True,
              comment="Unix time the file is deleted; NULL = kept"),
    sa.PrimaryKeyConstraint("slot"),
    sa.Index("ix_uploads_uploader_created_at", "uploader", "created_at"),
    sa.Index("ix_uploads_expires_at", "expires_at"),
    comment="HTTP File Upload (XEP-0363) slots and files (storage/upload.py)",
)

muc_rooms = sa.Table(
    "muc_rooms",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("jid", sa.String(BARE_JID_LENGTH), nullable=False,
              comment="the room's bare JID (room@conference.domain)"),
    sa.Column("config", sa.Text, nullable=False,
              comment="JSON of the room configuration (muc/config.py RoomConfig)"),
    sa.Column("subject", sa.Text, nullable=True, comment="current subject, XEP-0045 §8.1"),
    sa.Column("subject_nick", sa.String(PART_LENGTH), nullable=True,
              comment="nick that set the subject (the 'from' of the subject message)"),
    sa.Column("creator", sa.String(BARE_JID_LENGTH), nullable=True,
              comment="bare JID that created the room (rooms-per-user limit)"),
    sa.Column("vcard", sa.Text, nullable=True,
              comment="the room's vcard-temp XML (avatar), set by owners"),
    sa.Column("avatar_hash", sa.String(64), nullable=True,
              comment="SHA-1 hex of the avatar image, XEP-0153"),
    sa.Column("created_at", sa.Double, nullable=False, comment="Unix time, seconds"),
    sa.UniqueConstraint("jid"),
    comment="persistent group chat rooms (XEP-0045 §10.1)",
)

muc_affiliations = sa.Table(
    "muc_affiliations",
    metadata,
    sa.Column("room_id", sa.Integer, sa.ForeignKey("muc_rooms.id", ondelete="CASCADE"),
              nullable=False),
    sa.Column("jid", sa.String(BARE_JID_LENGTH), nullable=False,
              comment="bare JID (or domain) the affiliation is for"),
    sa.Column("affiliation", sa.String(8), nullable=False,
              comment="owner | admin | member | outcast"),
    sa.Column("nick", sa.String(PART_LENGTH), nullable=True,
              comment="nick reserved for this member, if any"),
    sa.Column("reason", sa.Text, nullable=True, comment="reason given with the change"),
    sa.PrimaryKeyConstraint("room_id", "jid"),
    sa.CheckConstraint("affiliation IN ('owner', 'admin', 'member', 'outcast')",
                       name="affiliation"),
)

muc_archive = sa.Table(
    "muc_archive",
    metadata,
    sa.Column("id", BigIntId, primary_key=True, autoincrement=True,
              comment="archive order"),
    sa.Column("room_id", sa.Integer, sa.ForeignKey("muc_rooms.id", ondelete="CASCADE"),
              nullable=False),
    sa.Column("stanza_id", sa.String(64), nullable=False,
              comment="XEP-0359 stanza-id the room gave the message (MAM id)"),
    sa.Column("created_at", sa.Double, nullable=False, comment="Unix time, seconds"),
    sa.Column("nick", sa.String(PART_LENGTH), nullable=False, comment="sender's nick"),
    sa.Column("occupant_id", sa.String(64), nullable=True, comment="XEP-0421 occupant id"),
    sa.Column("sender", sa.String(BARE_JID_LENGTH), nullable=True,
              comment="sender's real bare JID (who may retract it)"),
    sa.Column("stanza", sa.Text, nullable=False,
              comment="serialized message as broadcast (no 'to'); a tombstone once retracted"),
    sa.Column("retracted", sa.Boolean, nullable=False, server_default=sa.false(),
              comment="retracted (XEP-0424) or moderated (XEP-0425)"),
    sa.UniqueConstraint("room_id", "stanza_id"),
    sa.Index("ix_muc_archive_room_id_created_at", "room_id", "created_at"),
    comment="group chat archive (XEP-0313 on the room JID)",
)

fast_tokens = sa.Table(
    "fast_tokens",
    metadata,
    _user_fk(),
    sa.Column("device", sa.String(128), nullable=False,
              comment="the client's XEP-0388 user-agent id: tokens are per device"),
    sa.Column("slot", sa.String(8), nullable=False,
              comment="'new' (issued, not used yet) or 'current' (used); XEP-0484 §5.1"),
    sa.Column("mechanism", sa.String(32), nullable=False,
              comment="the HT-* mechanism the token is bound to (XEP-0484 §3.4)"),
    sa.Column("nonce", sa.LargeBinary, nullable=False,
              comment="random bytes the token is derived from with a key kept outside "
                      "the database (c2s/fast.py): the token itself is not stored"),
    sa.Column("label", sa.String(255), nullable=True,
              comment="the user-agent's software and device names, for listing"),
    sa.Column("issued_at", sa.Double, nullable=False, comment="Unix time, seconds"),
    sa.Column("expires_at", sa.Double, nullable=False, comment="Unix time, seconds"),
    sa.PrimaryKeyConstraint("user_id", "device", "slot"),
    sa.CheckConstraint("slot IN ('new', 'current')", name="slot"),
    comment="FAST authentication tokens (XEP-0484), two slots per account and device",
)

push_registrations = sa.Table(
    "push_registrations",
    metadata,
    _user_fk(),
    sa.Column("service", sa.String(FULL_JID_LENGTH), nullable=False,
              comment="the XMPP Push Service's JID (XEP-0357 'jid')"),
    sa.Column("node", sa.String(PART_LENGTH), nullable=False,
              comment="the node on the push service ('' when the client gave none)"),
    sa.Column("resource", sa.String(PART_LENGTH), nullable=True,
              comment="resource of the session that enabled it: the device"),
    sa.Column("publish_options", sa.Text, nullable=True,
              comment="JSON [[var, [values]], ...] of the publish-options form, sent back "
                      "with every publish (the app server's secret)"),
    sa.Column("include_body", sa.Boolean, nullable=False, server_default=sa.false(),
              comment="the client asked for message bodies in notifications"),
    sa.Column("created_at", sa.Double, nullable=False, comment="Unix time, seconds"),
    sa.PrimaryKeyConstraint("user_id", "service", "node"),
    comment="push notification registrations (XEP-0357 §5)",
)

# -- message archives (XEP-0313) -------------------------------------------------

archive_messages = sa.Table(
    "archive_messages",
    metadata,
    sa.Column("id", BigIntId, primary_key=True, autoincrement=False,
              comment="order and time in one: (Unix microseconds << 10) | sequence, "
                      "assigned by the server; see storage/archive.py"),
    _user_fk(),
    sa.Column("nonce", sa.Integer, nullable=False,
              comment="random 32 bits of the public archive id (XEP-0359 stanza-id)"),
    sa.Column("with_hash", sa.Integer, nullable=False,
              comment="CRC-32 of with_jid as a signed 32-bit integer: a small index key"),
    sa.Column("with_jid", sa.String(BARE_JID_LENGTH), nullable=False,
              comment="bare JID of the other party: 'to' of outgoing, 'from' of incoming"),
    sa.Column("with_resource", sa.String(PART_LENGTH), nullable=True,
              comment="resource of that JID, when the stanza named one"),
    sa.Column("body", sa.Text, nullable=True,
              comment="text of <body/>, for full-text search (XEP-0431); NULL without one"),
    sa.Column("stanza", sa.Text, nullable=False, comment="serialized XML of the archived message"),
    sa.Index("ix_archive_messages_user_id_id", "user_id", "id"),
    sa.Index("ix_archive_messages_user_id_with_hash_id", "user_id", "with_hash", "id"),
    comment="user message archives (XEP-0313): one row per message per archive",
)

archive_prefs = sa.Table(
    "archive_prefs",
    metadata,
    sa.Column("user_id", sa.Integer, sa.ForeignKey("users.id", ondelete="CASCADE"),
              primary_key=True),
    sa.Column("default_policy", sa.String(6), nullable=False,
              comment="XEP-0441 default: always | never | roster"),
    sa.Column("always", sa.Text, nullable=False, server_default="[]",
              comment="JSON list of JIDs whose messages are always archived"),
    sa.Column("never", sa.Text, nullable=False, server_default="[]",
              comment="JSON list of JIDs whose messages are never archived"),
    sa.CheckConstraint("default_policy IN ('always', 'never', 'roster')", name="default_policy"),
    comment="archiving preferences (XEP-0441) of accounts that set them",
)

#: SQLite: an FTS5 table (rowid = archive_messages.id) of each body and an
#: owner token ('u' || user_id) that restricts a search to one archive inside
#: the index. It is filled by an indexer that follows the archive in bounded
#: chunks (archive_fts_state.indexed_to: every row up to there is indexed),
#: so a burst of writes does not pay for tokenizing; a trigger removes
#: deleted rows (a no-op for rows never indexed). See storage/archive.py.
SQLITE_FTS_DDL = (
    "CREATE VIRTUAL TABLE archive_fts USING fts5("
    "owner, body, tokenize='unicode61 remove_diacritics 2')",
    "CREATE TABLE archive_fts_state ("
    "id INTEGER PRIMARY KEY CHECK (id = 1), indexed_to INTEGER NOT NULL)",
    "INSERT INTO archive_fts_state (id, indexed_to) VALUES (1, 0)",
    "CREATE TRIGGER archive_fts_delete AFTER DELETE ON archive_messages "
    "WHEN old.body IS NOT NULL BEGIN "
    "DELETE FROM archive_fts WHERE rowid = old.id; "
    "END",
)
SQLITE_FTS_DROP = (
    "DROP TRIGGER IF EXISTS archive_fts_delete",
    "DROP TABLE IF EXISTS archive_fts_state",
    "DROP TABLE IF EXISTS archive_fts",
)
#: PostgreSQL: a GIN index on the 'simple' text-search vector of the body;
#: queries use the same expression (storage/archive.py).
POSTGRESQL_FTS_DDL = (
    "CREATE INDEX ix_archive_messages_fulltext ON archive_messages "
    "USING gin (to_tsvector('simple'::regconfig, body))",
)
POSTGRESQL_FTS_DROP = ("DROP INDEX IF EXISTS ix_archive_messages_fulltext",)

#: names of the full-text objects (and FTS5's shadow tables): not Tables here
SEARCH_OBJECTS = frozenset((
    "archive_fts", "archive_fts_data", "archive_fts_idx", "archive_fts_docsize",
    "archive_fts_config", "archive_fts_content", "archive_fts_state",
    "ix_archive_messages_fulltext",
))

for _statement in SQLITE_FTS_DDL:
    sa.event.listen(archive_messages, "after_create",
                    sa.DDL(_statement).execute_if(dialect="sqlite"))
for _statement in POSTGRESQL_FTS_DDL:
    sa.event.listen(archive_messages, "after_create",
                    sa.DDL(_statement).execute_if(dialect="postgresql"))
for _statement in SQLITE_FTS_DROP:
    sa.event.listen(archive_messages, "before_drop",
                    sa.DDL(_statement).execute_if(dialect="sqlite"))


def include_object(obj: object, name: str | None, type_: str, reflected: bool,
                   compare_to: object) -> bool:
    """Alembic ``include_object`` hook: skip the full-text objects, which are
    DDL, not metadata (Alembic would report them as tables to drop)."""
    return name not in SEARCH_OBJECTS


# -- Publish-Subscribe (XEP-0060), PEP (XEP-0163), profiles, private storage --

pubsub_nodes = sa.Table(
    "pubsub_nodes",
    metadata,
    sa.Column("id", BigIntId, primary_key=True, autoincrement=True),
    sa.Column("service", sa.String(BARE_JID_LENGTH), nullable=False,
              comment="PEP: the owner's bare JID; pubsub service: its domain"),
    sa.Column("name", sa.String(PART_LENGTH), nullable=False, comment="the NodeID"),
    sa.Column("user_id", sa.Integer, sa.ForeignKey("users.id", ondelete="CASCADE"), nullable=True,
              comment="owning (PEP) or creating (service) local account; its nodes go with it"),
    sa.Column("config", sa.Text, nullable=False, comment="JSON of the node configuration"),
    sa.Column("created_at", sa.Double, nullable=False, comment="Unix time, seconds"),
    sa.UniqueConstraint("service", "name"),
    sa.Index("ix_pubsub_nodes_user_id", "user_id"),
)

pubsub_items = sa.Table(
    "pubsub_items",
    metadata,
    sa.Column("id", BigIntId, primary_key=True, autoincrement=True,
              comment="publication order: a re-published item gets a new id"),
    sa.Column("node_id", BigIntId,
              sa.ForeignKey("pubsub_nodes.id", ondelete="CASCADE"), nullable=False),
    sa.Column("item_id", sa.String(PART_LENGTH), nullable=False, comment="the ItemID"),
    sa.Column("publisher", sa.String(BARE_JID_LENGTH), nullable=False,
              comment="bare JID that published it"),
    sa.Column("payload", sa.Text, nullable=False, comment="serialized XML of the payload ('' for none)"),
    sa.Column("payload_bytes", sa.Integer, nullable=False, comment="UTF-8 length of payload"),
    sa.Column("published_at", sa.Double, nullable=False, comment="Unix time, seconds"),
    sa.UniqueConstraint("node_id", "item_id"),
)

pubsub_affiliations = sa.Table(
    "pubsub_affiliations",
    metadata,
    sa.Column("node_id", BigIntId,
              sa.ForeignKey("pubsub_nodes.id", ondelete="CASCADE"), nullable=False),
    sa.Column("jid", sa.String(BARE_JID_LENGTH), nullable=False, comment="bare JID"),
    sa.Column("affiliation", sa.String(16), nullable=False,
              comment="XEP-0060 §4.1: owner | publisher | publish-only | member | outcast"),
    sa.PrimaryKeyConstraint("node_id", "jid"),
)

pubsub_subscriptions = sa.Table(
    "pubsub_subscriptions",
    metadata,
    sa.Column("node_id", BigIntId,
              sa.ForeignKey("pubsub_nodes.id", ondelete="CASCADE"), nullable=False),
    sa.Column("jid", sa.String(BARE_JID_LENGTH + 1 + PART_LENGTH), nullable=False,
              comment="subscriber JID (bare or full) as it subscribed"),
    sa.Column("subid", sa.String(64), nullable=False),
    sa.PrimaryKeyConstraint("node_id", "jid"),
)

entity_caps = sa.Table(
    "entity_caps",
    metadata,
    sa.Column("ver", sa.String(255), nullable=False,
              comment="XEP-0115 'hash:ver' string, verified before it is stored"),
    sa.Column("features", sa.Text, nullable=False, comment="JSON list of disco#info features"),
    sa.Column("seen_at", sa.Double, nullable=False, comment="Unix time it was last stored"),
    sa.PrimaryKeyConstraint("ver"),
    comment="entity capabilities shared by every account (XEP-0115 §5.4 caching)",
)

vcards = sa.Table(
    "vcards",
    metadata,
    sa.Column("user_id", sa.Integer, sa.ForeignKey("users.id", ondelete="CASCADE"),
              primary_key=True),
    sa.Column("vcard", sa.Text, nullable=False, comment="serialized vcard-temp <vCard/> (XEP-0054)"),
    sa.Column("vcard_bytes", sa.Integer, nullable=False),
)

private_storage = sa.Table(
    "private_storage",
    metadata,
    _user_fk(),
    sa.Column("key", sa.String(PART_LENGTH), nullable=False,
              comment="'{namespace}name' of the stored element (XEP-0049)"),
    sa.Column("xml", sa.Text, nullable=False, comment="the serialized element"),
    sa.Column("xml_bytes", sa.Integer, nullable=False),
    sa.PrimaryKeyConstraint("user_id", "key"),
)


blocklist_items = sa.Table(
    "blocklist_items",
    metadata,
    _user_fk(),
    sa.Column("jid", sa.String(FULL_JID_LENGTH), nullable=False,
              comment="blocked JID as prepared: user@domain[/resource] or domain[/resource]"),
    sa.Column("created_at", sa.Double, nullable=False, comment="Unix time, seconds"),
    sa.PrimaryKeyConstraint("user_id", "jid"),
    comment="XEP-0191 block list: JIDs the user blocks communication with",
)

spam_reports = sa.Table(
    "spam_reports",
    metadata,
    sa.Column("id", BigIntId, primary_key=True, autoincrement=True),
    sa.Column("reporter", sa.String(BARE_JID_LENGTH), nullable=False,
              comment="bare JID of the local account that reported; kept when it is deleted"),
    sa.Column("jid", sa.String(FULL_JID_LENGTH), nullable=False,
              comment="the reported (and blocked) JID"),
    sa.Column("reason", sa.String(PART_LENGTH), nullable=False,
              comment="XEP-0377 reason URI, e.g. urn:xmpp:reporting:spam"),
    sa.Column("text", sa.Text, nullable=True, comment="the reporter's explanation, if any"),
    sa.Column("stanza_ids", sa.Text, nullable=False, server_default="[]",
              comment="JSON list of [by, id] XEP-0359 stanza-ids the report points at"),
    sa.Column("created_at", sa.Double, nullable=False, comment="Unix time, seconds"),
    sa.Index("ix_spam_reports_created_at", "created_at"),
    sa.Index("ix_spam_reports_reporter", "reporter"),
    comment="XEP-0377 reports sent with a block, for operators (chatbxctl reports list)",
)


tombstones = sa.Table(
    "tombstones",
    metadata,
    sa.Column("username", sa.String(PART_LENGTH), nullable=False,
              comment="localpart of a deleted account"),
    sa.Column("domain", sa.String(PART_LENGTH), nullable=False),
    sa.Column("deleted_at", sa.Double, nullable=False,
              comment="Unix time the account was deleted (nodes close its sessions)"),
    sa.Column("reserved_until", sa.Double, nullable=False,
              comment="nobody may register the name before this Unix time"),
    sa.PrimaryKeyConstraint("username", "domain"),
    sa.Index("ix_tombstones_deleted_at", "deleted_at"),
    comment="deleted accounts whose address may not be taken over yet (storage/accounts.py)",
)

invites = sa.Table(
    "invites",
    metadata,
    sa.Column("token", sa.String(64), nullable=False,
              comment="random URL-safe secret; the invite link carries it"),
    sa.Column("domain", sa.String(PART_LENGTH), nullable=False,
              comment="hosted domain the invite creates an account on"),
    sa.Column("kind", sa.String(16), nullable=False,
              comment="'account' (operator/admin) or 'contact' (a user's, XEP-0379)"),
    sa.Column("creator_id", sa.Integer, sa.ForeignKey("users.id", ondelete="CASCADE"),
              nullable=True,
              comment="inviting account, added to the new account's roster; NULL = operator"),
    sa.Column("username", sa.String(PART_LENGTH), nullable=True,
              comment="the only localpart the invite may register; NULL = any"),
    sa.Column("register", sa.Boolean, nullable=False, server_default=sa.true(),
              comment="the invite may create an account (contact invites may not)"),
    sa.Column("admin", sa.Boolean, nullable=False, server_default=sa.false(),
              comment="the account it creates is an admin"),
    sa.Column("created_at", sa.Double, nullable=False),
    sa.Column("expires_at", sa.Double, nullable=False, comment="Unix time it stops working"),
    sa.PrimaryKeyConstraint("token"),
    sa.Index("ix_invites_expires_at", "expires_at"),
    sa.Index("ix_invites_creator_id", "creator_id"),
    sa.CheckConstraint("kind IN ('account', 'contact')", name="kind"),
    comment="XEP-0401 invites; single use: a used invite is deleted (storage/invites.py)",
)

captcha_challenges = sa.Table(
    "captcha_challenges",
    metadata,
    sa.Column("id", sa.String(32), nullable=False, comment="random hex; the form's challenge"),
    sa.Column("answer", sa.String(16), nullable=False, comment="the expected text (lower case)"),
    sa.Column("expires_at", sa.Double, nullable=False, comment="Unix time it stops working"),
    sa.PrimaryKeyConstraint("id"),
    sa.Index("ix_captcha_challenges_expires_at", "expires_at"),
    comment="XEP-0158 CAPTCHAs shown and not yet answered; in the database so any node "
            "checks the answer (storage/invites.py)",
)
