//! txpipe broker (being written; see module docs).

pub mod log;
