-- 0008: the discovery catalog (SPEC.md §12; relay/core/catalog.py, relay/delivery/catalog.py).
--
-- * catalog — one row per local agent: who may see it listed (``visibility``), what the
--   operator says of it (``description``, ``tags``, ``queries``: JSON arrays of text), what the
--   agent last said of itself (``profile``: its A2A card's skills, its MCP server's tools, as
--   JSON; NULL before it was first reached), and ``document``, the text the full-text index
--   holds, written by the store from the rest. Kept in the store, so a restarted relay lists
--   an MCP server's tools before it reaches the server again. ``pk`` is an INTEGER PRIMARY KEY
--   because the index refers to rows by rowid, which VACUUM renumbers unless it is aliased.
-- * catalog_fts — the FTS5 index (https://www.sqlite.org/fts5.html) of each row's agent name
--   and document, with the Porter stemmer over the unicode61 tokenizer, so "translate
--   invoices" matches "Translates invoice documents"; and of its visibility, so that a search
--   keeps to what its caller may see inside the index, without reading a catalog row per
--   match. Kept in step by the triggers below, in the transaction of every change (deletes
--   through the agents' ON DELETE CASCADE included).
--
-- Every existing agent gets a row with the defaults.

CREATE TABLE catalog (
    pk          INTEGER PRIMARY KEY,
    agent       TEXT NOT NULL UNIQUE REFERENCES agents (name) ON DELETE CASCADE,
    visibility  TEXT NOT NULL DEFAULT 'local'
                CHECK (visibility IN ('private', 'local', 'partners', 'public')),
    description TEXT NOT NULL DEFAULT '',
    tags        TEXT NOT NULL DEFAULT '[]',
    queries     TEXT NOT NULL DEFAULT '[]',
    profile     TEXT,
    document    TEXT NOT NULL DEFAULT '',
    updated     TEXT NOT NULL
) STRICT;

CREATE INDEX catalog_visibility ON catalog (visibility, agent);

CREATE VIRTUAL TABLE catalog_fts USING fts5 (
    name, document, visibility, tokenize = 'porter unicode61'
);

CREATE TRIGGER catalog_fts_insert AFTER INSERT ON catalog BEGIN
    INSERT INTO catalog_fts (rowid, name, document, visibility)
    VALUES (new.pk, new.agent, new.document, new.visibility);
END;

CREATE TRIGGER catalog_fts_delete AFTER DELETE ON catalog BEGIN
    DELETE FROM catalog_fts WHERE rowid = old.pk;
END;

CREATE TRIGGER catalog_fts_update AFTER UPDATE OF document, visibility ON catalog BEGIN
    UPDATE catalog_fts SET document = new.document, visibility = new.visibility
    WHERE rowid = new.pk;
END;

INSERT INTO catalog (agent, document, updated)
SELECT name, '', strftime('%Y-%m-%dT%H:%M:%fZ', 'now') FROM agents;
