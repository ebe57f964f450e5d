//! What users write, validated: addresses and prefixes, durations, rule
//! targets and specs, list files. Pure: nothing here touches the kernel.

pub mod attach;
pub mod cidr;
pub mod crowdsec;
pub mod duration;
pub mod listfile;
pub mod policy;
pub mod rule;
