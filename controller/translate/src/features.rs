//! The Gateway API features Sluice implements, published in GatewayClass
//! `status.supportedFeatures`. The conformance suite tests exactly these, so a name is
//! added here only together with the code (and tests) that implement it.

/// Feature names (Gateway API v1.7.0 `pkg/features`), sorted.
pub const SUPPORTED_FEATURES: &[&str] = &[
    "BackendTLSPolicy",
    "BackendTLSPolicySANValidation",
    "GRPCRoute",
    "GRPCRouteNamedRouteRule",
    "GRPCRouteRequestHeaderModifier",
    "Gateway",
    "GatewayAddressEmpty",
    "GatewayBackendClientCertificate",
    "GatewayFrontendClientCertificateValidation",
    "GatewayFrontendClientCertificateValidationInsecureFallback",
    "GatewayHTTPListenerIsolation",
    "GatewayHTTPSListenerDetectMisdirectedRequests",
    "GatewayInfrastructure",
    "GatewayPort8080",
    "GatewayRouteHostnameIntersectionPrecedence",
    "GatewayStaticAddresses",
    "HTTPRoute",
    "HTTPRoute303RedirectStatusCode",
    "HTTPRoute307RedirectStatusCode",
    "HTTPRoute308RedirectStatusCode",
    "HTTPRouteBackendProtocolH2C",
    "HTTPRouteBackendProtocolWebSocket",
    "HTTPRouteBackendRequestHeaderModification",
    "HTTPRouteBackendTimeout",
    "HTTPRouteBackendURLRewrite",
    "HTTPRouteCORS",
    "HTTPRouteDestinationPortMatching",
    "HTTPRouteHostRewrite",
    "HTTPRouteMethodMatching",
    "HTTPRouteNamedRouteRule",
    "HTTPRouteParentRefPort",
    "HTTPRoutePathRedirect",
    "HTTPRoutePathRewrite",
    "HTTPRoutePortRedirect",
    "HTTPRouteQueryParamMatching",
    "HTTPRouteRequestMirror",
    "HTTPRouteRequestMultipleMirrors",
    "HTTPRouteRequestPercentageMirror",
    "HTTPRouteRequestTimeout",
    "HTTPRouteResponseHeaderModification",
    "HTTPRouteRetryCodes",
    "HTTPRouteRetryConnectionError",
    "HTTPRouteSchemeRedirect",
    "ListenerSet",
    "ReferenceGrant",
    "TCPRoute",
    "TLSRoute",
    "TLSRouteModeMixed",
    "TLSRouteModeTerminate",
    "UDPRoute",
];

pub(crate) fn supported_features() -> Vec<String> {
    SUPPORTED_FEATURES.iter().map(|name| (*name).to_string()).collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn sorted_and_unique() {
        let mut sorted = super::SUPPORTED_FEATURES.to_vec();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted, super::SUPPORTED_FEATURES);
    }

    /// docs/status.md's feature table names exactly the claimed features, each with an
    /// example and at least one conformance test.
    #[test]
    fn documented_in_docs_status() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/status.md");
        let doc = std::fs::read_to_string(path).unwrap();
        let section = doc.split("## Supported features").nth(1).unwrap().split("\n## ").next().unwrap();
        let mut documented = Vec::new();
        for row in section.lines().filter(|l| l.starts_with("| `")) {
            let cells: Vec<&str> = row.trim_matches('|').split(" | ").map(str::trim).collect();
            assert_eq!(cells.len(), 3, "{row}");
            assert!(!cells[1].is_empty() && !cells[2].is_empty(), "example and tests: {row}");
            documented.push(cells[0].trim_matches('`').to_string());
        }
        assert_eq!(documented, super::SUPPORTED_FEATURES, "docs/status.md lists the claimed features, sorted");
    }
}
