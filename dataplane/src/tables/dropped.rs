//! What a snapshot holds that the data plane does not serve.

/// A piece of a snapshot the data plane does not serve: a route (it answers 500, or never
/// matches when its match cannot be compiled), a listener, a certificate or a client
/// validation (the listeners that need it are dropped too).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dropped {
    /// The piece's snapshot name (`httproute/ns/r/rule/0/match/0`, `gateway/ns/gw/listener/l`).
    pub name: String,
    pub problem: String,
}
