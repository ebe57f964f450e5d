//! Test and lab support for the XDP filter: network-namespace labs, a driver
//! for the real `filter-ctl` binary, frame builders, a `BPF_PROG_TEST_RUN`
//! harness, and an independent reference model of the filter's decisions.

pub mod crowdsec;
pub mod ctl;
pub mod flood;
pub mod frames;
pub mod metrics;
pub mod model;
pub mod netns;
pub mod progtest;
pub mod rules;
