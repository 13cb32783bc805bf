//go:build tools

// tools.go pins the CoreDNS main package that ../build compiles, so that
// `go mod tidy` keeps its dependencies in go.mod and go.sum. The Gateway API
// conformance base manifests deploy registry.k8s.io/coredns/coredns:v1.12.2;
// this is the same release, built from source with the default plugin set.
// It is a module of its own so that CoreDNS's dependency versions (its
// k8s.io/* among them) are exactly upstream's, not unified with ../go.mod's.
package coredns

import (
	_ "github.com/coredns/coredns"
)
