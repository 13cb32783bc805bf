//go:build tools

// tools.go pins main packages that ./build compiles, so that
// `go mod tidy` keeps their dependencies in go.mod and go.sum.
package conformance

import (
	// echo-basic is the backend every Gateway API conformance test deploys
	// (image gcr.io/k8s-staging-gateway-api/echo-basic). Its go.mod upstream is
	// hidden as .go.mod, so it is a package of the separate
	// sigs.k8s.io/gateway-api/conformance module (its own module since v1.5).
	_ "sigs.k8s.io/gateway-api/conformance/echo-basic"
)
