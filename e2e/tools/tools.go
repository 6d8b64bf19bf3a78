//go:build tools

// Package tools records the commands `make cluster` builds, so `go mod tidy` keeps them.
package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
	_ "k8s.io/kubernetes/cmd/kubectl"

	// etcd 3.6 (the version Kubernetes itself pins): Debian's 3.4 lacks RequestWatchProgress.
	_ "go.etcd.io/etcd/server/v3/etcdmain"
)
