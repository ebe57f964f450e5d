//! filter-ctl: the user-space side of the XDP filter. The binary's commands
//! are thin wrappers around these modules; tests use them directly.

pub mod abi;
pub mod batch;
pub mod cidr;
pub mod clock;
pub mod duration;
pub mod filter;
pub mod limits;
pub mod loader;
pub mod pins;

pub use loader::EBPF_OBJECT;
