//go:build tools

// Package cluster pins the upstream programs that ./build compiles, so that
// `go mod tidy` keeps every module they need in go.mod and go.sum. The file is
// never compiled (build tag `tools`).
package cluster

import (
	_ "go.etcd.io/etcd/server/v3"
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kube-proxy"
	_ "k8s.io/kubernetes/cmd/kubectl"
)
