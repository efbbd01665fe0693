//! BGP speaker. Filled by the BGP issue; until then this crate exports nothing.
