// Command kube-controller-manager is upstream's kube-controller-manager, built from its Go module.
//
// k8s.io/kubernetes cannot be `go install`ed: its go.mod replaces the k8s.io/*
// staging modules with local directories. This wrapper module imports the
// command's package instead, and its go.mod (written by
// dev/localcluster/build.py from versions.env) pins each staging module to its
// published v0.X.Y tag. The body mirrors upstream's main package.
package main

import (
	"os"
	_ "time/tzdata" // CronJob time zones, as upstream

	"k8s.io/component-base/cli"
	_ "k8s.io/component-base/logs/json/register"
	_ "k8s.io/component-base/metrics/prometheus/clientgo"
	_ "k8s.io/component-base/metrics/prometheus/version"
	controllermanager "k8s.io/kubernetes/cmd/kube-controller-manager/app"
)

func main() {
	os.Exit(cli.Run(controllermanager.NewControllerManagerCommand()))
}
