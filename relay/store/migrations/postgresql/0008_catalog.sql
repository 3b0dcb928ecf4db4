-- 0008: the discovery catalog; the same table as relay/store/migrations/sqlite/0008_catalog.sql,
-- which explains it, with PostgreSQL's types. The full-text index is a generated tsvector
-- (https://www.postgresql.org/docs/current/textsearch-tables.html) of the agent name (weight A)
-- and the document (weight B) with the 'english' configuration (Snowball stemming, stop
-- words), under a GIN index.

CREATE TABLE catalog (
    pk          bigint GENERATED ALWAYS AS IDENTITY UNIQUE,
    agent       text PRIMARY KEY REFERENCES agents (name) ON DELETE CASCADE,
    visibility  text NOT NULL DEFAULT 'local'
                CHECK (visibility IN ('private', 'local', 'partners', 'public')),
    description text NOT NULL DEFAULT '',
    tags        text NOT NULL DEFAULT '[]',
    queries     text NOT NULL DEFAULT '[]',
    profile     text,
    document    text NOT NULL DEFAULT '',
    updated     timestamptz NOT NULL,
    tsv         tsvector GENERATED ALWAYS AS (
                    setweight(to_tsvector('english', agent), 'A')
                    || setweight(to_tsvector('english', document), 'B')) STORED
);

CREATE INDEX catalog_visibility ON catalog (visibility, agent);

CREATE INDEX catalog_tsv ON catalog USING gin (tsv);

INSERT INTO catalog (agent, updated) SELECT name, now() FROM agents;
