//! Echo backends for Services annotated with [`super::ECHO_ANNOTATION`].

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};

use sluice_translate::World;

use super::{ECHO_ANNOTATION, echo, grpc_echo};

/// Which echo backend runs at an address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum EchoKind {
    Http,
    Udp,
    Grpc,
}

/// The running echo backends, by address and kind.
#[derive(Default)]
pub(super) struct Echoes {
    running: BTreeMap<(SocketAddr, EchoKind), tokio::task::JoinHandle<()>>,
}

impl Echoes {
    /// Runs an echo backend at each static endpoint of Services annotated for it.
    pub(super) async fn ensure(&mut self, world: &World) {
        let mut wanted: BTreeMap<(SocketAddr, EchoKind), echo::EchoIdentity> = BTreeMap::new();
        for service in &world.services {
            let annotated = service.metadata.annotations.as_ref().and_then(|a| a.get(ECHO_ANNOTATION));
            let grpc = match annotated.map(String::as_str) {
                Some("true") => false,
                Some("grpc") => true,
                _ => continue,
            };
            let namespace = service.metadata.namespace.clone().unwrap_or_default();
            let name = service.metadata.name.clone().unwrap_or_default();
            for slice in &world.endpoint_slices {
                let owner = slice.metadata.labels.as_ref().and_then(|l| l.get("kubernetes.io/service-name"));
                if slice.metadata.namespace.as_deref() != Some(namespace.as_str()) || owner != Some(&name) {
                    continue;
                }
                for endpoint in &slice.endpoints {
                    for address in &endpoint.addresses {
                        let Ok(ip) = address.parse::<IpAddr>() else { continue };
                        if !ip.is_loopback() {
                            eprintln!("sluice: echo backends run on loopback only; skipping {address} of {name}");
                            continue;
                        }
                        for slice_port in slice.ports.iter().flatten() {
                            let Some(Ok(port)) = slice_port.port.map(u16::try_from) else { continue };
                            let kind = match (slice_port.protocol.as_deref() == Some("UDP"), grpc) {
                                (true, _) => EchoKind::Udp,
                                (false, true) => EchoKind::Grpc,
                                (false, false) => EchoKind::Http,
                            };
                            wanted.insert(
                                (SocketAddr::new(ip, port), kind),
                                echo::EchoIdentity {
                                    namespace: namespace.clone(),
                                    service: name.clone(),
                                    pod: format!("{name}-{ip}-{port}"),
                                },
                            );
                        }
                    }
                }
            }
        }
        self.running.retain(|address, task| {
            let keep = wanted.contains_key(address);
            if !keep {
                task.abort();
            }
            keep
        });
        for ((address, kind), identity) in wanted {
            if self.running.contains_key(&(address, kind)) {
                continue;
            }
            let started = match kind {
                EchoKind::Http => echo::start(address, identity).await,
                EchoKind::Udp => echo::start_udp(address, identity).await,
                EchoKind::Grpc => grpc_echo::start(address, identity).await,
            };
            match started {
                Ok(task) => {
                    self.running.insert((address, kind), task);
                }
                Err(error) => eprintln!("sluice: cannot start the echo backend on {address}: {error}"),
            }
        }
    }
}
