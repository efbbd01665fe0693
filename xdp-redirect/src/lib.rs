//! XDP steering program, loader and AF_XDP sockets. Filled by the AF_XDP runtime issue; until
//! then this crate exports nothing.
