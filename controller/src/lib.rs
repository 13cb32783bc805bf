//! The Sluice control plane as a library: the push server (`push`) and standalone mode
//! (`standalone`), used by the `sluice-controller` and `sluice` binaries.

pub mod cli;
pub mod push;
pub mod standalone;
