//! (filled in by this version's read models)
