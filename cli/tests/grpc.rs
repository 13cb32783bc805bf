//! gRPC through the data plane end to end: GRPCRoutes translated, pushed to a real data
//! plane, called with a real gRPC client (h2c with prior knowledge) against the built-in
//! gRPC echo backends. Method and header routing, unmatched calls (Unimplemented), status
//! codes, messages and trailers passed through, streams not buffered, weights.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a test failure

mod support;

use std::time::Duration;

use sluice_controller::standalone::echo::EchoIdentity;
use sluice_snapshot::echo::echo_client::EchoClient;
use sluice_snapshot::echo::{EchoRequest, FailRequest};
use support::*;

fn manifests(listener: u16, backend_a: u16, backend_b: u16) -> String {
    let backend = |name: &str, port: u16| {
        format!(
            "apiVersion: v1
kind: Service
metadata: {{name: {name}, namespace: default}}
spec:
  ports: [{{name: grpc, port: 8080}}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: {name}-static
  namespace: default
  labels: {{kubernetes.io/service-name: {name}}}
addressType: IPv4
ports: [{{name: grpc, port: {port}}}]
endpoints:
  - addresses: [127.0.0.1]
    conditions: {{ready: true}}
"
        )
    };
    format!(
        "apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {{name: sluice}}
spec: {{controllerName: sluice.dev/gateway-controller}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: gw, namespace: default}}
spec:
  gatewayClassName: sluice
  listeners:
    - {{name: http, port: {listener}, protocol: HTTP}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: {{name: echo, namespace: default}}
spec:
  parentRefs: [{{name: gw}}]
  hostnames: [grpc.example.com]
  rules:
    - matches:
        - method: {{service: sluice.echo.v1.Echo, method: Echo}}
      filters:
        - type: RequestHeaderModifier
          requestHeaderModifier:
            set: [{{name: x-routed-by, value: sluice}}]
      backendRefs: [{{name: a, port: 8080}}]
    - matches:
        - method: {{service: sluice.echo.v1.Echo, method: EchoTwo}}
          headers: [{{name: version, value: two}}]
      backendRefs: [{{name: b, port: 8080}}]
    - matches:
        - method: {{service: sluice.echo.v1.Echo, method: EchoTwo}}
      backendRefs: [{{name: a, port: 8080}}]
    - matches:
        - method: {{service: sluice.echo.v1.Echo, method: Stream}}
        - method: {{service: sluice.echo.v1.Echo, method: Fail}}
      backendRefs: [{{name: b, port: 8080}}]
---
{}---
{}",
        backend("a", backend_a),
        backend("b", backend_b)
    )
}

fn grpc_echo(service: &str, runtime: &tokio::runtime::Runtime) -> u16 {
    let listener = runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
    let port = listener.local_addr().unwrap().port();
    let identity = EchoIdentity { namespace: "default".into(), service: service.into(), pod: format!("{service}-0") };
    runtime.spawn(sluice_controller::standalone::grpc_echo::serve(listener, identity));
    port
}

async fn client(port: u16, authority: &str) -> EchoClient<tonic::transport::Channel> {
    let endpoint = tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{port}"))
        .unwrap()
        .origin(format!("http://{authority}").parse().unwrap())
        .connect_timeout(Duration::from_secs(5));
    EchoClient::new(endpoint.connect().await.unwrap())
}

fn request(message: &str, headers: &[(&'static str, &'static str)]) -> tonic::Request<EchoRequest> {
    let mut request = tonic::Request::new(EchoRequest { message: message.into() });
    for (name, value) in headers {
        request.metadata_mut().insert(*name, value.parse().unwrap());
    }
    request
}

#[test]
fn grpc_routes_route_calls_and_pass_statuses_trailers_and_streams() {
    let backends = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let (a, b) = (grpc_echo("a", &backends), grpc_echo("b", &backends));
    let (port, admin) = (free_port(), free_port());
    let (world, skipped) = sluice_translate::World::from_manifests(&manifests(port, a, b));
    assert!(skipped.is_empty(), "{skipped:?}");
    let output = sluice_translate::translate(&world);
    let route = output.status.grpc_routes.get(&sluice_translate::ObjectKey::new("default", "echo")).unwrap();
    assert!(route.parents[0].conditions.iter().all(|c| c.status == sluice_translate::ConditionStatus::True));
    let gateway = "default/gw";
    let snapshot = output.gateways.values().next().unwrap().snapshot.clone();
    let controller = Controller::start(0, None);
    controller.push.publish(gateway, snapshot);
    let _dataplane = dataplane(controller.address, gateway, "pod-0", admin);
    eventually(Duration::from_secs(20), "the data plane", || {
        controller.push.progress().get(gateway).is_some_and(|p| p.programmed().is_ok())
            && std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    });

    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        let mut echo = client(port, "grpc.example.com").await;
        // Method routing, with the rule's header edit.
        let reply = echo.echo(request("hi", &[])).await.unwrap().into_inner();
        assert_eq!((reply.service.as_str(), reply.message.as_str()), ("a", "hi"));
        assert_eq!(reply.method, "/sluice.echo.v1.Echo/Echo");
        assert_eq!(reply.headers.get("x-routed-by").map(String::as_str), Some("sluice"));
        assert_eq!(reply.authority, "grpc.example.com");
        // Header matching: the rule with more header matches first.
        let two = echo.echo_two(request("x", &[("version", "two")])).await.unwrap().into_inner();
        assert_eq!(two.service, "b");
        let one = echo.echo_two(request("x", &[("version", "one")])).await.unwrap().into_inner();
        assert_eq!(one.service, "a");
        // A status from the backend, with its message and trailers, reaches the client.
        let failed = echo.fail(FailRequest { code: 5, message: "no such thing".into() }).await.unwrap_err();
        assert_eq!(failed.code(), tonic::Code::NotFound);
        assert_eq!(failed.message(), "no such thing");
        assert_eq!(failed.metadata().get("x-echo-trailer").map(|v| v.to_str().unwrap()), Some("yes"));
        // A stream: each reply arrives before the next request is sent (nothing buffered).
        let (sender, receiver) = tokio::sync::mpsc::channel(1);
        let mut replies =
            echo.stream(tokio_stream::wrappers::ReceiverStream::new(receiver)).await.unwrap().into_inner();
        for n in 0..3 {
            sender.send(EchoRequest { message: format!("m{n}") }).await.unwrap();
            let reply =
                tokio::time::timeout(Duration::from_secs(5), replies.message()).await.unwrap().unwrap().unwrap();
            assert_eq!((reply.service.as_str(), reply.message.as_str()), ("b", format!("m{n}").as_str()));
        }
        drop(sender);
        assert!(replies.message().await.unwrap().is_none());
        // No route for the host: Unimplemented (the data plane's 404), as for any
        // unmatched call.
        let mut other = client(port, "other.example.com").await;
        assert_eq!(other.echo(request("x", &[])).await.unwrap_err().code(), tonic::Code::Unimplemented);
    });
    // Plain HTTP to the host is not gRPC: no GRPCRoute rule matches it.
    assert_eq!(get(port, "grpc.example.com", "/sluice.echo.v1.Echo/Echo").unwrap().0, 404);
    // The backends' grpc-status codes are counted per route (from the trailers).
    let (_, _, metrics) = get(admin, "admin", "/metrics").unwrap();
    let line = |route: &str, code: &str| {
        format!(r#"sluice_grpc_responses_total{{route="grpcroute/default/echo/{route}",grpc_status="{code}"}}"#)
    };
    assert!(metrics.contains(&format!("{} 1", line("rule/0/match/0", "OK"))), "{metrics}");
    assert!(metrics.contains(&format!("{} 1", line("rule/3/match/1", "NOT_FOUND"))), "{metrics}");
}
