//! The Sluice control plane as a library: the push server (`push`), the deployer's
//! renderer (`deploy`) and standalone mode (`standalone`), used by the
//! `sluice-controller` and `sluice` binaries.

pub mod cli;
pub mod cluster;
pub mod deploy;
pub mod push;
pub mod standalone;
