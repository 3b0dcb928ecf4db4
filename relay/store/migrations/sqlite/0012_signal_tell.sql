-- 0012: what partners are still to be told of a signal this relay owns (SPEC.md §13.6).
--
-- * signals.tell — 0 when partners know the signal as it stands (or need not: scope local, a
--   partner's replica, a heartbeat); 1 while its offer (an envelope of kind ``signal``) is owed;
--   2 while an update (``signal.update``) is owed. A change that partners must hear of sets it in
--   the change's own transaction; the offer or update is built from the row as it then stands and
--   taken into custody in the transaction that sets it back to 0 (relay/store/sql/store.py,
--   ``signal_told``). A crash in between leaves the mark, and the relay's sweep tells partners
--   after the restart: nothing a partner must hear of is lost, and the emit or claim does not
--   wait for an envelope to be built, signed and queued.
-- * signals_tell — the sweep's look-up of the owed ones: a partial index, so finding none among
--   a long history of signals costs one index probe.
--
-- Existing signals took their offers and updates into custody with their writes (0007 to 0010):
-- nothing is owed for them.

ALTER TABLE signals ADD COLUMN tell INTEGER NOT NULL DEFAULT 0;
CREATE INDEX signals_tell ON signals (id) WHERE tell <> 0;
