// Command kubectl is upstream's kubectl at the local cluster's Kubernetes
// version, so tests never run a client outside the supported version skew.
// See ../kube-apiserver/main.go for why this wrapper module exists.
package main

import (
	"os"

	_ "k8s.io/client-go/plugin/pkg/client/auth"
	"k8s.io/component-base/cli"
	"k8s.io/component-base/logs"
	"k8s.io/kubectl/pkg/cmd"
	"k8s.io/kubectl/pkg/cmd/util"
)

func main() {
	// As upstream: set klog verbosity before the command is built, so plugin
	// and kuberc handling log at the requested level.
	logs.GlogSetter(cmd.GetLogVerbosity(os.Args)) // nolint:errcheck
	command := cmd.NewDefaultKubectlCommand()
	if err := cli.RunNoErrOutput(command); err != nil {
		util.CheckErr(err)
	}
}
