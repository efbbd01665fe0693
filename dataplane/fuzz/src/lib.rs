//! What the dataplane's fuzz targets share: the pipeline target's input format ([`input`]),
//! the states it runs on ([`states`]), its packet I/O that checks every frame leaving the
//! worker ([`io`]), the independent frame checks that I/O uses ([`check`]), and the snapshot
//! target's framing ([`frame`]).

pub mod check;
pub mod frame;
pub mod input;
pub mod io;
pub mod states;
