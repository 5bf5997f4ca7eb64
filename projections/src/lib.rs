//! Chronicle's read side: projector workers that tail the log through
//! `EventStore::read_all` and keep PostgreSQL read models, and the query functions over them.
//! Not built yet: the GET routes of this version read aggregates directly.
