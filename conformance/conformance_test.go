package conformance_test

import (
	"testing"

	"sigs.k8s.io/gateway-api/conformance"
)

// TestConformance runs the upstream Gateway API conformance suite against
// the cluster in the current kubeconfig. Everything is configured by the
// suite's own flags (-gateway-class, -conformance-profiles, -report-output,
// -supported-features, -skip-tests, ...); see conformance/utils/flags in
// sigs.k8s.io/gateway-api/conformance.
func TestConformance(t *testing.T) {
	conformance.RunConformance(t)
}
