//! filter-ctl: the user-space side of the XDP filter, in layers that depend
//! one way only: the binary's commands → [`control`] (the controller loop)
//! → [`maps`] (pins, locks, map I/O) and [`state`] (the persistent state
//! directory; uses only `maps::lock`) → [`spec`] (what users write,
//! validated; pure) → `filter_common`.

pub mod abi;
pub mod clock;
pub mod control;
pub mod error;
pub mod maps;
pub mod spec;
pub mod state;

pub use maps::loader::EBPF_OBJECT;
