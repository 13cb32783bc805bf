//go:build tools

// tools.go pins main packages that ./build compiles, so that
// `go mod tidy` keeps their dependencies in go.mod and go.sum.
package conformance

import (
	// echo-basic is the backend every Gateway API conformance test deploys
	// (image registry.k8s.io/gateway-api/conformance/echo-basic). Since Gateway
	// API v1.7 it lives in its own module, sigs.k8s.io/gateway-api-conformance-images.
	_ "sigs.k8s.io/gateway-api-conformance-images/echo-basic"
)
